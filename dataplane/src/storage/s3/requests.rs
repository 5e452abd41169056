//! Counts of what the backend asks of the bucket: every request sent (retries included), by
//! S3 operation, and the fact cache's hits and misses. Exported as Prometheus metrics and read
//! by tests that pin the number of bucket requests per registry operation.

use aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LookupLabels {
    result: &'static str,
}

/// Request and cache counters of one backend; cheap to clone (shared counters).
#[derive(Debug, Clone, Default)]
pub(super) struct RequestCounts {
    requests: Family<OperationLabels, Counter>,
    lookups: Family<LookupLabels, Counter>,
}

impl RequestCounts {
    /// Registers the counters in `registry` (`storage_s3_requests`,
    /// `storage_s3_cache_lookups`).
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "storage_s3_requests",
            "Requests sent to the S3 bucket (each retry counts), by S3 operation",
            self.requests.clone(),
        );
        registry.register(
            "storage_s3_cache_lookups",
            "Lookups in the cache of immutable bucket facts, by result (hit, miss)",
            self.lookups.clone(),
        );
    }

    /// Counts a cache lookup.
    pub(super) fn lookup(&self, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.lookups.get_or_create(&LookupLabels { result }).inc();
    }

    /// Counts a request sent outside the SDK (`super::direct`).
    pub(super) fn count(&self, operation: &str) {
        self.requests
            .get_or_create(&OperationLabels {
                operation: operation.to_owned(),
            })
            .inc();
    }

    /// An SDK interceptor counting every request the client transmits.
    pub(super) fn interceptor(&self) -> CountRequests {
        CountRequests {
            counts: self.clone(),
        }
    }
}

/// Counts each attempt of each operation just before it goes on the wire.
#[derive(Debug)]
pub(super) struct CountRequests {
    counts: RequestCounts,
}

impl Intercept for CountRequests {
    fn name(&self) -> &'static str {
        "CountRequests"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let operation = cfg
            .load::<Metadata>()
            .map_or("unknown", |metadata| metadata.name());
        self.counts.count(operation);
        Ok(())
    }
}
