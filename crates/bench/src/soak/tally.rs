//! What the soak counts: every answer's status by client class, and which of them the API does
//! not document.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// The 5xx answers the API documents: 503 (`limit_exceeded` for a connection over the limit,
/// `not_ready` during the startup grace) and 507 (a full disk). Anything else at or above 500 is
/// a failure of the soak.
pub fn is_undocumented(status: u16, body: &[u8]) -> bool {
    match status {
        503 => {
            let body = String::from_utf8_lossy(body);
            !(body.contains("\"limit_exceeded\"") || body.contains("\"not_ready\""))
        }
        507 => false,
        s => s >= 500,
    }
}

/// Counts per client class: answers by status, connections the server closed, transport
/// errors, and the undocumented answers (kept, at most a few per class, for the report).
#[derive(Debug, Default)]
pub struct Tally {
    inner: Mutex<BTreeMap<&'static str, ClassCounts>>,
}

#[derive(Debug, Default, Clone)]
pub struct ClassCounts {
    pub statuses: BTreeMap<u16, u64>,
    /// Connections the registry closed (EOF or reset), as the bounds mean it to.
    pub closed_by_server: u64,
    /// Connections still open when the client gave up waiting for the registry to close them.
    pub outlived_deadline: u64,
    /// Requests that failed below HTTP (connect refused, reset mid-answer).
    pub transport_errors: u64,
    pub undocumented: Vec<String>,
}

impl ClassCounts {
    pub fn total_answers(&self) -> u64 {
        self.statuses.values().sum()
    }
}

impl Tally {
    pub fn answer(&self, class: &'static str, status: u16, body: &[u8]) {
        let mut map = self.lock();
        let c = map.entry(class).or_default();
        *c.statuses.entry(status).or_default() += 1;
        if is_undocumented(status, body) && c.undocumented.len() < 5 {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            c.undocumented.push(format!("{status} {text}"));
        }
    }

    pub fn closed(&self, class: &'static str) {
        self.lock().entry(class).or_default().closed_by_server += 1;
    }

    pub fn outlived(&self, class: &'static str) {
        self.lock().entry(class).or_default().outlived_deadline += 1;
    }

    pub fn transport_error(&self, class: &'static str) {
        self.lock().entry(class).or_default().transport_errors += 1;
    }

    pub fn snapshot(&self) -> BTreeMap<&'static str, ClassCounts> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, ClassCounts>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_documented_5xx_pass() {
        assert!(!is_undocumented(200, b""));
        assert!(!is_undocumented(429, b""));
        assert!(!is_undocumented(
            503,
            br#"{"code":"limit_exceeded","message":"x"}"#
        ));
        assert!(!is_undocumented(
            503,
            br#"{"code":"not_ready","message":"x"}"#
        ));
        assert!(is_undocumented(503, b"upstream gone"));
        assert!(!is_undocumented(507, b""));
        assert!(is_undocumented(500, br#"{"code":"internal"}"#));
        assert!(is_undocumented(502, b""));
    }
}
