//! The HTTP client under every store client, counting the transient failures it sees (5xx and
//! 429 answers, broken connections): the store client retries each of them, so the count is what a
//! run reports as the store's retries.

use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpRequest, HttpResponse, HttpService, ReqwestConnector,
};
use object_store::ClientOptions;
use std::sync::atomic::{AtomicU64, Ordering};

static TRANSIENT: AtomicU64 = AtomicU64::new(0);

/// Transient store failures seen by this process so far (each retried, the last one of a request
/// that ran out of retries included).
pub fn transient_failures() -> u64 {
    TRANSIENT.load(Ordering::Relaxed)
}

/// Makes reqwest clients, wrapped in the counting service.
#[derive(Debug, Default)]
pub struct CountingConnector;

impl HttpConnector for CountingConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        Ok(HttpClient::new(Counting(ReqwestConnector::default().connect(options)?)))
    }
}

#[derive(Debug)]
struct Counting(HttpClient);

#[async_trait::async_trait]
impl HttpService for Counting {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let r = self.0.execute(req).await;
        let transient = match &r {
            Ok(resp) => resp.status().is_server_error() || resp.status().as_u16() == 429,
            Err(_) => true,
        };
        if transient {
            TRANSIENT.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
}
