//! Logs and traces of a deltamesh process.
//!
//! Logs go to stderr, filtered by `RUST_LOG`, as text or as one JSON object
//! per line ([`LogFormat`]); lines about a connection carry its `trace_id`.
//! Traces are exported over OTLP/gRPC when the standard OpenTelemetry
//! variables ask for it (`OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, or `OTEL_TRACES_EXPORTER=otlp`),
//! with the sampler, batching and resource from `OTEL_TRACES_SAMPLER`,
//! `OTEL_BSP_*`, `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`.
//! Otherwise no tracer is installed and every span is a no-op.

use anyhow::Context as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, with the fields of the line and its spans.
    Json,
}

/// The process's trace exporter, if tracing is on; flushed by [`Telemetry::shutdown`].
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Installs the logger and, when configured, the OTLP trace exporter.
    /// `service` is the default `service.name`. Must run within Tokio.
    pub fn init(service: &'static str, format: LogFormat) -> anyhow::Result<Telemetry> {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| "info,str0m=warn".into());
        let logs = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        match format {
            LogFormat::Text => logs.init(),
            LogFormat::Json => logs.json().with_current_span(false).init(),
        }
        let provider = if tracing_wanted(&|name| std::env::var(name).ok()) {
            Some(tracer_provider(service)?)
        } else {
            None
        };
        if let Some(provider) = &provider {
            opentelemetry::global::set_tracer_provider(provider.clone());
            tracing::info!(service, "exporting traces over OTLP");
        }
        Ok(Telemetry { provider })
    }

    /// Exports the spans still buffered and stops the exporter.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(error) = provider.shutdown()
        {
            tracing::warn!(%error, "flushing traces failed");
        }
    }
}

/// Whether the `OTEL_*` variables (read through `var`) turn the OTLP trace
/// exporter on.
pub fn tracing_wanted(var: &dyn Fn(&str) -> Option<String>) -> bool {
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return false;
    }
    match var("OTEL_TRACES_EXPORTER").map(|v| v.trim().to_ascii_lowercase()) {
        Some(exporter) if exporter == "none" => false,
        Some(exporter) if exporter == "otlp" => true,
        _ => [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ]
        .iter()
        .any(|name| var(name).is_some_and(|v| !v.trim().is_empty())),
    }
}

fn tracer_provider(service: &'static str) -> anyhow::Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .context("building the OTLP trace exporter")?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service);
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

#[cfg(test)]
mod tests {
    use super::tracing_wanted;

    fn wanted(vars: &[(&str, &str)]) -> bool {
        tracing_wanted(&|name| {
            vars.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        })
    }

    #[test]
    fn tracing_is_off_unless_an_otlp_endpoint_or_exporter_is_named() {
        assert!(!wanted(&[]));
        assert!(!wanted(&[("OTEL_SERVICE_NAME", "x")]));
        assert!(!wanted(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]));
        assert!(wanted(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://jaeger:4317"
        )]));
        assert!(wanted(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://j:4317"
        )]));
        assert!(wanted(&[("OTEL_TRACES_EXPORTER", "otlp")]));
    }

    #[test]
    fn tracing_can_be_switched_off_by_the_standard_variables() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4317");
        assert!(!wanted(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")]));
        assert!(!wanted(&[endpoint, ("OTEL_SDK_DISABLED", "true")]));
        assert!(wanted(&[endpoint, ("OTEL_SDK_DISABLED", "false")]));
    }
}
