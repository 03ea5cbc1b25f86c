//! The metric set (README, Operations). The registry is injected (tests run many gateways in one
//! process); labels are route templates, upstream and issuer names, and fixed reason words:
//! never raw paths or token content, so cardinality is bounded by the config.

use http::Method;
use prometheus::{
    exponential_buckets, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub auth_failures: IntCounterVec,
    /// Requests an audit-mode route forwarded although its checks refused them.
    pub audit_would_deny: IntCounterVec,
    /// Routes in audit mode in the config in use.
    pub routes_not_enforcing: IntGauge,
    pub cache_hits: IntCounter,
    pub cache_misses: IntCounter,
    pub jwks_refreshes: IntCounterVec,
    pub jwks_keys: IntGaugeVec,
    pub jwks_from_cache: IntGaugeVec,
    pub key_cache_writes: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub tokens_issued: IntCounterVec,
    pub config_restart_required: IntGaugeVec,
    pub connections_parked: IntGauge,
}

/// Buckets from 50µs to ~3.3s: proxy overhead is sub-millisecond, upstreams are not.
fn latency_buckets() -> Vec<f64> {
    exponential_buckets(0.000_05, 2.0, 17).unwrap_or_default()
}

impl Metrics {
    pub fn new(registry: Registry) -> Result<Metrics, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new("scopegate_requests_total", "Requests answered, by route template, method and status"),
            &["route", "method", "status"],
        )?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "scopegate_request_duration_seconds",
                "Time from request head to response head, by route template",
            )
            .buckets(latency_buckets()),
            &["route"],
        )?;
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "scopegate_upstream_duration_seconds",
                "Time waiting for the upstream's response head, by upstream",
            )
            .buckets(latency_buckets()),
            &["upstream"],
        )?;
        let auth_failures = IntCounterVec::new(
            Opts::new("scopegate_auth_failures_total", "Refused tokens and scopes, by reason"),
            &["reason"],
        )?;
        let audit_would_deny = IntCounterVec::new(
            Opts::new(
                "scopegate_audit_would_deny_total",
                "Requests a route in audit mode (enforce = false) forwarded although its token or scope check refused them, by route template and reason",
            ),
            &["route", "reason"],
        )?;
        let routes_not_enforcing = IntGauge::new(
            "scopegate_routes_not_enforcing",
            "Routes in audit mode (enforce = false) in the config in use: they forward what they would refuse",
        )?;
        registry.register(Box::new(audit_would_deny.clone()))?;
        registry.register(Box::new(routes_not_enforcing.clone()))?;
        let cache_hits = IntCounter::new("scopegate_token_cache_hits_total", "Verified-token cache hits")?;
        let cache_misses = IntCounter::new("scopegate_token_cache_misses_total", "Verified-token cache misses")?;
        let jwks_refreshes = IntCounterVec::new(
            Opts::new("scopegate_jwks_refreshes_total", "JWKS fetches, by issuer and result (ok, error)"),
            &["issuer", "result"],
        )?;
        let jwks_keys = IntGaugeVec::new(Opts::new("scopegate_jwks_keys", "Usable keys held, by issuer"), &["issuer"])?;
        let jwks_from_cache = IntGaugeVec::new(
            Opts::new(
                "scopegate_jwks_from_cache",
                "1 while the issuer's keys in use came from key_cache_dir (the IdP could not be reached), 0 once a fetch succeeded",
            ),
            &["issuer"],
        )?;
        let key_cache_writes = IntCounterVec::new(
            Opts::new(
                "scopegate_key_cache_writes_total",
                "Key set files written to key_cache_dir, by result (ok, error)",
            ),
            &["result"],
        )?;
        registry.register(Box::new(jwks_from_cache.clone()))?;
        registry.register(Box::new(key_cache_writes.clone()))?;
        let config_reloads = IntCounterVec::new(
            Opts::new("scopegate_config_reloads_total", "Config reloads, by result (ok, error)"),
            &["result"],
        )?;
        let tokens_issued = IntCounterVec::new(
            Opts::new("scopegate_tokens_issued_total", "Tokens issued by the built-in issuer, by client"),
            &["client_id"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(upstream_duration.clone()))?;
        registry.register(Box::new(auth_failures.clone()))?;
        registry.register(Box::new(cache_hits.clone()))?;
        registry.register(Box::new(cache_misses.clone()))?;
        registry.register(Box::new(jwks_refreshes.clone()))?;
        registry.register(Box::new(jwks_keys.clone()))?;
        registry.register(Box::new(config_reloads.clone()))?;
        let config_restart_required = IntGaugeVec::new(
            Opts::new(
                "scopegate_config_restart_required",
                "1 while the config asks for a value of this setting that only a restart applies",
            ),
            &["setting"],
        )?;
        registry.register(Box::new(tokens_issued.clone()))?;
        registry.register(Box::new(config_restart_required.clone()))?;
        let connections_parked = IntGauge::new(
            "scopegate_connections_parked",
            "Idle HTTP/1.1 keep-alive connections parked: holding their socket only, no HTTP state or buffers",
        )?;
        registry.register(Box::new(connections_parked.clone()))?;
        Ok(Metrics {
            registry,
            requests,
            request_duration,
            upstream_duration,
            auth_failures,
            audit_would_deny,
            routes_not_enforcing,
            cache_hits,
            cache_misses,
            jwks_refreshes,
            jwks_keys,
            jwks_from_cache,
            key_cache_writes,
            config_reloads,
            tokens_issued,
            config_restart_required,
            connections_parked,
        })
    }

    /// The Prometheus text exposition of everything registered.
    pub fn render(&self) -> String {
        prometheus::TextEncoder::new().encode_to_string(&self.registry.gather()).unwrap_or_default()
    }
}

/// A method as a label: the standard ones by name, anything else as `OTHER`.
pub fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}
