//! An app's admin endpoint: GET, readiness and Prometheus metrics.

use std::time::Duration;

use crate::process::eventually;

/// GETs a path from an app's admin endpoint.
pub fn admin_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let addr = addr.parse().ok()?;
    tributary::admin::request(addr, "GET", path, b"").ok()
}

/// Waits until an app's `/health/ready` answers 200 `ready`, or (with `reason`) 503 with
/// that reason among its reasons. `Err` holds the last answer.
pub fn wait_readiness(
    admin: &str,
    reason: Option<&str>,
    timeout: Duration,
) -> Result<(), Option<(u16, String)>> {
    let mut last = None;
    let reached = eventually(timeout, || {
        last = admin_get(admin, "/health/ready");
        let (status, body) = last.as_ref()?;
        let reached = match reason {
            None => *status == 200 && body == "ready\n",
            Some(r) => *status == 503 && body.contains(r),
        };
        reached.then_some(())
    });
    reached.ok_or(last)
}

/// A metric from an app's Prometheus endpoint.
pub fn metric(admin: &str, name: &str) -> Option<f64> {
    let (_, text) = admin_get(admin, "/metrics")?;
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}
