//! A tower layer around the client gRPC server that counts requests by method and status code
//! and times them, for every service at once (KV, Cluster, Maintenance, health, later Watch).
//!
//! The code is read from the response headers: tonic answers a failed unary call with a
//! "trailers-only" response whose headers carry `grpc-status`; a response without it is `OK`
//! (an error a stream ends with later is not seen here). The time is until the response
//! headers, which for unary calls is the whole call.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Context;
use std::task::Poll;
use std::time::Instant;

use tower::Layer;
use tower::Service;

use super::metrics::MethodLabels;
use super::metrics::NodeMetrics;
use super::metrics::RequestLabels;

#[derive(Clone)]
pub struct RequestMetricsLayer {
    metrics: Arc<NodeMetrics>,
}

impl RequestMetricsLayer {
    pub fn new(metrics: Arc<NodeMetrics>) -> Self {
        RequestMetricsLayer { metrics }
    }
}

impl<S> Layer<S> for RequestMetricsLayer {
    type Service = RequestMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestMetrics {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RequestMetrics<S> {
    inner: S,
    metrics: Arc<NodeMetrics>,
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

impl<S, RequestBody, ResponseBody> Service<http::Request<RequestBody>> for RequestMetrics<S>
where
    S: Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        let method = request.uri().path().to_string();
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            let code = match &response {
                Ok(response) => code_name(response.headers().get("grpc-status")),
                Err(_) => "Unavailable".to_string(),
            };
            metrics
                .request_seconds
                .get_or_create(&MethodLabels {
                    method: method.clone(),
                })
                .observe(started.elapsed().as_secs_f64());
            metrics
                .requests
                .get_or_create(&RequestLabels { method, code })
                .inc();
            response
        })
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
