//! What the simulator saw: counters by operation and status, and a bounded request log, for
//! tests and benchmarks to assert on.

use std::collections::{BTreeMap, VecDeque};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Request counts. `requests[operationId][status]`; a dropped connection counts under status 0.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    pub requests: BTreeMap<String, BTreeMap<u16, u64>>,
    /// Service-account tokens issued.
    pub tokens_issued: u64,
    /// 401 answers carrying a digest challenge.
    pub digest_challenges: u64,
    /// 429 answers (API rate limits and the token endpoint's).
    pub rate_limited: u64,
    /// 400 `INVITATIONS_RATE_LIMITED_IP` answers.
    pub invitations_rate_limited: u64,
    /// Injected 500s and 503s.
    pub faults_injected: u64,
    /// Connections closed on purpose without an answer.
    pub connections_dropped: u64,
}

impl Counters {
    /// Requests of `operation_id` answered with `status`.
    pub fn count(&self, operation_id: &str, status: u16) -> u64 {
        self.requests.get(operation_id).and_then(|s| s.get(&status)).copied().unwrap_or(0)
    }

    /// All requests of `operation_id`, whatever the answer.
    pub fn total(&self, operation_id: &str) -> u64 {
        self.requests.get(operation_id).map(|s| s.values().sum()).unwrap_or(0)
    }

    /// All requests the simulator has counted.
    pub fn total_requests(&self) -> u64 {
        self.requests.values().flat_map(|s| s.values()).sum()
    }
}

/// One request as the simulator answered it. Never holds credentials.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedRequest {
    pub seq: u64,
    /// Simulator clock when the answer went out.
    pub at: Timestamp,
    pub method: String,
    /// Path and query.
    pub path: String,
    pub operation_id: String,
    /// HTTP status; 0 when the connection was dropped.
    pub status: u16,
    pub error_code: Option<String>,
    /// `apiKey:<public key>` or `serviceAccount:<client id>` once authenticated.
    pub principal: Option<String>,
    /// The resource version served (`2025-02-19`, ...).
    pub version: Option<String>,
    pub duration_micros: u64,
}

#[derive(Debug)]
pub(crate) struct Observations {
    pub counters: Counters,
    log: VecDeque<LoggedRequest>,
    capacity: usize,
    next_seq: u64,
}

impl Observations {
    pub fn new(capacity: usize) -> Self {
        Self { counters: Counters::default(), log: VecDeque::new(), capacity, next_seq: 0 }
    }

    pub fn record(&mut self, mut entry: LoggedRequest) {
        *self.counters.requests.entry(entry.operation_id.clone()).or_default().entry(entry.status).or_default() += 1;
        if self.capacity == 0 {
            return;
        }
        entry.seq = self.next_seq;
        self.next_seq += 1;
        if self.log.len() >= self.capacity {
            self.log.pop_front();
        }
        self.log.push_back(entry);
    }

    pub fn log(&self) -> Vec<LoggedRequest> {
        self.log.iter().cloned().collect()
    }

    pub fn reset(&mut self) {
        self.counters = Counters::default();
        self.log.clear();
    }
}
