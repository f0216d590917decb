//! Prometheus text exposition, as the operator's /metrics and the kube-apiserver's /metrics
//! serve it: enough parsing to sum a metric's samples by labels.

use std::collections::BTreeMap;

/// One sample: metric name, labels, value.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Every sample of the text (comments skipped, timestamps ignored).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let close = line.rfind('}')?;
            (&line[..open], parse_labels(&line[open + 1..close]), &line[close + 1..])
        }
        None => {
            let (name, rest) = line.split_once(' ')?;
            (name, BTreeMap::new(), rest)
        }
    };
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample { name: name.to_string(), labels, value })
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = text.chars().peekable();
    loop {
        let key: String =
            chars.by_ref().skip_while(|c| *c == ',' || c.is_whitespace()).take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        if chars.next() != Some('"') {
            break;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        out.insert(key.trim().to_string(), value);
    }
    out
}

/// The samples of `name`; an error naming the metric if there is none (renamed or removed).
pub fn require<'a>(samples: &'a [Sample], name: &str, source: &str) -> Result<Vec<&'a Sample>, String> {
    let found: Vec<&Sample> = samples.iter().filter(|s| s.name == name).collect();
    if found.is_empty() {
        return Err(format!(
            "{source} serves no metric `{name}`: this benchmark needs it (was it renamed? update benches/controller.rs)"
        ));
    }
    Ok(found)
}

/// Sum of the samples of `name` whose labels match every (key, value) of `filter`.
pub fn sum(samples: &[Sample], name: &str, filter: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && filter.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .map(|s| s.value)
        .sum()
}

/// `apiserver_request_total` summed by (verb, resource[/subresource]) over codes, scopes,
/// components and groups; non-resource requests (`/metrics`, `/readyz`, ...) left out.
pub fn apiserver_requests(samples: &[Sample]) -> BTreeMap<(String, String), f64> {
    let mut out = BTreeMap::new();
    for s in samples.iter().filter(|s| s.name == "apiserver_request_total") {
        let resource = s.labels.get("resource").cloned().unwrap_or_default();
        if resource.is_empty() {
            continue;
        }
        let verb = s.labels.get("verb").cloned().unwrap_or_default();
        let resource = match s.labels.get("subresource").filter(|r| !r.is_empty()) {
            Some(sub) => format!("{resource}/{sub}"),
            None => resource,
        };
        *out.entry((verb, resource)).or_insert(0.0) += s.value;
    }
    out
}

/// `after - before`, entries that did not change left out.
pub fn diff(
    before: &BTreeMap<(String, String), f64>,
    after: &BTreeMap<(String, String), f64>,
) -> BTreeMap<(String, String), f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d > 0.0)
        .collect()
}
