//! Counts the client API's calls by method and status code and times them, for every service at
//! once (KV, Cluster, Maintenance, health, later Watch): [`api::serve`](crate::api::serve)
//! records each call.
//!
//! The code is read from the response headers: tonic answers a failed unary call with a
//! "trailers-only" response whose headers carry `grpc-status`; a response without it is `OK`
//! (an error a stream ends with later is not seen here). The time is until the response
//! headers, which for unary calls is the whole call.

use std::sync::Arc;
use std::time::Instant;

use super::metrics::MethodLabels;
use super::metrics::NodeMetrics;
use super::metrics::RequestLabels;

/// One call being timed.
pub struct RequestRecord {
    metrics: Arc<NodeMetrics>,
    method: String,
    started: Instant,
}

impl RequestRecord {
    /// Starts timing a call to `method` (the request path, `/package.Service/Method`).
    pub fn start(metrics: &Arc<NodeMetrics>, method: &str) -> RequestRecord {
        RequestRecord {
            metrics: metrics.clone(),
            method: method.to_string(),
            started: Instant::now(),
        }
    }

    /// Counts the call with the status its response headers carry, and its time so far. A call
    /// no service implements is counted under [`UNKNOWN_METHOD`].
    pub fn finish<B>(self, response: &http::Response<B>) {
        let code = code_name(response.headers().get("grpc-status"));
        let method = if is_unknown_method(&code, response.headers().get("grpc-message")) {
            UNKNOWN_METHOD.to_string()
        } else {
            self.method
        };
        self.metrics
            .request_seconds
            .get_or_create(&MethodLabels {
                method: method.clone(),
            })
            .observe(self.started.elapsed().as_secs_f64());
        self.metrics
            .requests
            .get_or_create(&RequestLabels { method, code })
            .inc();
    }
}

/// The method label of every call to a service or method that does not exist: a client can
/// send any path, and one series per made-up path would grow the metrics without bound.
pub const UNKNOWN_METHOD: &str = "unknown";

/// Whether an answer is the one for a path no service implements: `UNIMPLEMENTED` with no
/// message, as tonic's generated servers answer an unknown method and `api::serve` an unknown
/// service. Our own `UNIMPLEMENTED` answers (Maintenance Hash, say) always name the RPC.
fn is_unknown_method(code: &str, message: Option<&http::HeaderValue>) -> bool {
    code == "Unimplemented" && message.is_none_or(|message| message.is_empty())
}

/// The name of a `grpc-status` value, as Prometheus labels show it.
fn code_name(status: Option<&http::HeaderValue>) -> String {
    let Some(value) = status.and_then(|v| v.to_str().ok()) else {
        return "OK".to_string();
    };
    match value.parse::<i32>() {
        Ok(number) => format!("{:?}", tonic::Code::from_i32(number)),
        Err(_) => "Unknown".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_grpc_status_is_ok_and_a_number_is_named() {
        assert_eq!(code_name(None), "OK");
        let unavailable = http::HeaderValue::from_static("14");
        assert_eq!(code_name(Some(&unavailable)), "Unavailable");
        let garbage = http::HeaderValue::from_static("x");
        assert_eq!(code_name(Some(&garbage)), "Unknown");
    }

    #[test]
    fn only_an_unimplemented_answer_without_a_message_is_an_unknown_method() {
        let named = http::HeaderValue::from_static("Hash is not implemented");
        let empty = http::HeaderValue::from_static("");
        assert!(is_unknown_method("Unimplemented", None));
        assert!(is_unknown_method("Unimplemented", Some(&empty)));
        assert!(!is_unknown_method("Unimplemented", Some(&named)));
        assert!(!is_unknown_method("OK", None));
    }
}
