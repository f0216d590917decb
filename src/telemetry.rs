//! Logging: JSON (for clusters) or plain text, filtered by `RUST_LOG` (default `info`).
//!
//! A JSON line is one flat object, the shape log pipelines (Loki, Datadog, GKE, Elastic)
//! read without a parsing rule: `timestamp`, `level`, `target`, `message` at the top level,
//! then the event's own fields and the fields of the spans it happened in (a reconcile's
//! `object` as `namespace/name` and `kind`). Errors are written with `Display`, never `Debug`.

use std::fmt;

use clap::ValueEnum;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, Layer, fmt as tfmt, prelude::*};

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// Human-readable lines.
    Plain,
}

/// Install the global subscriber. Calling it twice keeps the first one.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Json => registry.with(SpanFieldsLayer).with(tfmt::layer().event_format(FlatJson)).try_init(),
        LogFormat::Plain => registry
            .with(tfmt::layer().with_target(false).with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout())))
            .try_init(),
    };
    // A second init (tests, or an embedding program) keeps the existing subscriber.
    let _ = result;
}

/// Collects fields into a JSON object: numbers and booleans as such, everything else as
/// the text `Display` (or, for `?value`, `Debug`) gives.
struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for JsonVisitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}").into());
    }
}

/// A span's fields as JSON, kept in the span's extensions.
struct SpanFields(Map<String, Value>);

/// Records every span's fields so that [`FlatJson`] can put them on each line.
struct SpanFieldsLayer;

impl<S> Layer<S> for SpanFieldsLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Map::new();
        attrs.record(&mut JsonVisitor(&mut fields));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(fields));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            let mut extensions = span.extensions_mut();
            if let Some(SpanFields(fields)) = extensions.get_mut::<SpanFields>() {
                values.record(&mut JsonVisitor(fields));
            }
        }
    }
}

/// One flat JSON object per event (see the module documentation).
struct FlatJson;

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        writeln!(writer, "{}", Value::Object(flat_fields(ctx, event)))
    }
}

fn flat_fields<S, N>(ctx: &FmtContext<'_, S, N>, event: &Event<'_>) -> Map<String, Value>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    let meta = event.metadata();
    let mut line = Map::new();
    line.insert("timestamp".into(), jiff::Timestamp::now().to_string().into());
    line.insert("level".into(), meta.level().as_str().into());
    line.insert("target".into(), meta.target().into());
    // Outer spans first, so that an inner span's (and then the event's) field wins.
    if let Some(scope) = ctx.event_scope() {
        for span in scope.from_root() {
            if let Some(SpanFields(fields)) = span.extensions().get::<SpanFields>() {
                line.extend(fields.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
        }
    }
    event.record(&mut JsonVisitor(&mut line));
    line
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_are_flat_with_span_fields() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::registry()
            .with(SpanFieldsLayer)
            .with(tfmt::layer().event_format(FlatJson).with_writer(move || writer.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("reconcile", object = "team-a/alice", kind = "AtlasOrgUser");
            let _entered = span.enter();
            let error = std::io::Error::other("HTTP 400 CANNOT_REMOVE_LAST_ORG_OWNER: no");
            tracing::info!(operation = "createOrgUser", attempts = 2u64, "Atlas write: invite alice");
            tracing::warn!(error = &error as &(dyn std::error::Error + 'static), "failed");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["message"], "Atlas write: invite alice");
        assert_eq!(lines[0]["level"], "INFO");
        assert_eq!(lines[0]["object"], "team-a/alice");
        assert_eq!(lines[0]["kind"], "AtlasOrgUser");
        assert_eq!(lines[0]["operation"], "createOrgUser");
        assert_eq!(lines[0]["attempts"], 2);
        assert!(lines[0].get("fields").is_none() && lines[0].get("span").is_none(), "{text}");
        assert_eq!(lines[1]["error"], "HTTP 400 CANNOT_REMOVE_LAST_ORG_OWNER: no");
    }
}
