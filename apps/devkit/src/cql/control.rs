//! The ring's HTTP control surface: counters, faults and topology, changed while it runs.

use std::sync::Arc;

use super::server::*;
use serde::Deserialize;

impl Ring {
    /// The HTTP control surface: GET /counters, POST /counters/reset, GET /faults,
    /// POST /faults?node=N (JSON body with any Faults fields; no node = every node),
    /// GET /topology, POST /topology?node=N with {"member": true|false}.
    pub fn http_handler(&self) -> Arc<dyn tributary::admin::Handler> {
        use tributary::admin::{Request, Response};
        let ring = self.clone();
        Arc::new(move |r: &Request| match (r.method.as_str(), r.path.as_str()) {
            ("GET", "/counters") => Response::json(200, &ring.counters()),
            ("POST", "/counters/reset") => {
                ring.reset_counters();
                Response::text(200, "reset\n")
            }
            ("GET", "/faults") => Response::json(
                200,
                &(0..ring.cluster.nodes.len())
                    .map(|i| ring.faults(i))
                    .collect::<Vec<_>>(),
            ),
            ("POST", "/faults") => {
                let targets: Vec<usize> = match r.query_param("node").map(|n| n.parse::<usize>()) {
                    Some(Ok(n)) if n >= 1 && n <= ring.cluster.nodes.len() => vec![n - 1],
                    Some(_) => return Response::text(400, "node must be 1..=N\n"),
                    None => (0..ring.cluster.nodes.len()).collect(),
                };
                for i in targets {
                    let mut current = serde_json::to_value(ring.faults(i)).unwrap_or_default();
                    let patch: serde_json::Value = match serde_json::from_slice(&r.body) {
                        Ok(v) => v,
                        Err(e) => return Response::text(400, format!("body is not JSON: {e}\n")),
                    };
                    if let (Some(cur), Some(p)) = (current.as_object_mut(), patch.as_object()) {
                        for (k, v) in p {
                            cur.insert(k.clone(), v.clone());
                        }
                    }
                    match serde_json::from_value::<Faults>(current) {
                        Ok(f) => ring.set_faults(i, f),
                        Err(e) => return Response::text(400, format!("bad faults: {e}\n")),
                    }
                }
                Response::text(200, "ok\n")
            }
            ("GET", "/topology") => Response::json(
                200,
                &(0..ring.cluster.nodes.len())
                    .map(|i| {
                        serde_json::json!({
                            "address": ring.cluster.nodes[i].addr.to_string(),
                            "member": ring.is_member(i),
                        })
                    })
                    .collect::<Vec<_>>(),
            ),
            ("POST", "/topology") => {
                let node = match r.query_param("node").map(|n| n.parse::<usize>()) {
                    Some(Ok(n)) if n >= 1 && n <= ring.cluster.nodes.len() => n - 1,
                    _ => return Response::text(400, "node=N (1-based) is required\n"),
                };
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Change {
                    member: bool,
                }
                match serde_json::from_slice::<Change>(&r.body) {
                    Ok(c) => {
                        ring.set_member(node, c.member);
                        Response::text(200, "ok\n")
                    }
                    Err(e) => Response::text(400, format!("expected {{\"member\": true|false}}: {e}\n")),
                }
            }
            _ => Response::not_found(),
        })
    }
}
