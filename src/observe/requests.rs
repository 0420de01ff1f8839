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

    /// Counts the call with the status its response headers carry, and its time so far.
    pub fn finish<B>(self, response: &http::Response<B>) {
        let code = code_name(response.headers().get("grpc-status"));
        self.metrics
            .request_seconds
            .get_or_create(&MethodLabels {
                method: self.method.clone(),
            })
            .observe(self.started.elapsed().as_secs_f64());
        self.metrics
            .requests
            .get_or_create(&RequestLabels {
                method: self.method,
                code,
            })
            .inc();
    }
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
}
