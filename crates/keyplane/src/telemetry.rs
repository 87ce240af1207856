//! Logs and traces.
//!
//! - **Logs** go to stderr, as text (with colour only when stderr is a terminal) or JSON (one
//!   object a line). A line written while a request is answered names its id (`request_id`, the
//!   `X-Request-Id` of its answer), wherever in the code it was written: the id is the request
//!   task's ([`keyplane_http::observe::current_request_id`]), so no span is needed for it.
//! - **Traces** (OpenTelemetry, cargo feature `otel`, on by default): with `otel.endpoint` set,
//!   every sampled request's span is exported over OTLP/HTTP (protobuf or JSON) by a batch
//!   processor on its own thread. keyplane-http decides which requests are sampled
//!   ([`keyplane_http::observe::Sampler`]); without an endpoint nothing here runs at all.

use std::io::IsTerminal;
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// Installs the log subscriber: `format` is `text` or `json`; the filter comes from
/// `KEYPLANE_LOG` (default `info`). ANSI colour only when stderr is a terminal, so a log
/// written to a file or a pipe is plain text.
pub fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEYPLANE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal();
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let registry = tracing_subscriber::registry().with(filter);
    let installed = if format == "json" {
        registry
            .with(layer.json().map_event_format(WithRequestId::json))
            .try_init()
    } else {
        registry
            .with(layer.map_event_format(|f| WithRequestId::text(f.with_ansi(ansi))))
            .try_init()
    };
    // A subscriber already installed (a test harness) stays.
    let _ = installed;
}

/// An event format that adds the current request's id to every line written while a request
/// is answered.
pub struct WithRequestId<E> {
    inner: E,
    json: bool,
}

impl<T> WithRequestId<Format<tracing_subscriber::fmt::format::Full, T>> {
    pub fn text(inner: Format<tracing_subscriber::fmt::format::Full, T>) -> Self {
        Self { inner, json: false }
    }
}

impl<T> WithRequestId<Format<tracing_subscriber::fmt::format::Json, T>> {
    pub fn json(inner: Format<tracing_subscriber::fmt::format::Json, T>) -> Self {
        Self { inner, json: true }
    }
}

impl<S, N, E> FormatEvent<S, N> for WithRequestId<E>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    E: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let Some(id) = keyplane_http::observe::current_request_id() else {
            return self.inner.format_event(ctx, writer, event);
        };
        // The line is formatted whole, then the id put in: at the end of a text line, as the
        // first member of a JSON object. (The id's characters need no escaping in either.)
        let mut line = String::with_capacity(256);
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        if self.json {
            match line.strip_prefix('{') {
                Some(rest) if rest.trim_start().starts_with('}') => {
                    writer.write_fmt(format_args!("{{\"request_id\":\"{id}\"{rest}"))
                }
                Some(rest) => writer.write_fmt(format_args!("{{\"request_id\":\"{id}\",{rest}")),
                None => writer.write_str(&line),
            }
        } else {
            let body = line.strip_suffix('\n').unwrap_or(&line);
            writer.write_fmt(format_args!("{body} request_id={id}\n"))
        }
    }
}

/// The traces of one server, when `otel.endpoint` is set: what keyplane-http hands sampled
/// requests to, and what is flushed at shutdown.
pub struct Traces {
    #[cfg(feature = "otel")]
    inner: std::sync::Arc<otel::Otel>,
    /// Without the feature there are no traces to hold.
    #[cfg(not(feature = "otel"))]
    never: std::convert::Infallible,
}

impl Traces {
    /// Starts exporting, when the configuration asks for it.
    pub fn start(
        config: &crate::config::Config,
        build: &keyplane_http::observe::BuildInfo,
    ) -> anyhow::Result<Option<Traces>> {
        let Some(cfg) = &config.otel else {
            return Ok(None);
        };
        #[cfg(feature = "otel")]
        {
            let inner = std::sync::Arc::new(otel::Otel::start(cfg, build)?);
            tracing::info!(
                endpoint = %cfg.traces_url(),
                protocol = cfg.protocol.as_str(),
                sample_ratio = cfg.sample_ratio,
                hot_sample_ratio = cfg.hot_sample_ratio,
                "exporting traces over OTLP/HTTP"
            );
            Ok(Some(Traces { inner }))
        }
        #[cfg(not(feature = "otel"))]
        {
            let _ = (cfg, build);
            anyhow::bail!(
                "otel.endpoint is set, but this keyplane was built without OpenTelemetry \
                 (cargo feature `otel`)"
            )
        }
    }

    /// What keyplane-http traces requests with.
    pub fn tracing(&self, config: &crate::config::OtelConfig) -> keyplane_http::observe::Tracing {
        #[cfg(not(feature = "otel"))]
        match self.never {}
        #[cfg(feature = "otel")]
        keyplane_http::observe::Tracing {
            tracer: self.inner.clone(),
            sampler: keyplane_http::observe::Sampler::new(
                config.sample_ratio,
                config.hot_sample_ratio,
            ),
        }
    }

    /// Exports what is still buffered and stops the exporter (blocks; call it off the
    /// runtime's worker threads).
    pub fn shutdown(&self) {
        #[cfg(not(feature = "otel"))]
        match self.never {}
        #[cfg(feature = "otel")]
        self.inner.shutdown();
    }
}

#[cfg(feature = "otel")]
mod otel {
    use crate::config::{OtelConfig, OtelProtocol};
    use axum::http::{HeaderMap, HeaderValue, StatusCode};
    use keyplane_http::observe::{BuildInfo, Outcome, RequestSpan, SpanStart, Tracer};
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider};
    use opentelemetry::{Context, KeyValue};
    use opentelemetry_http::{Bytes, HeaderExtractor, HeaderInjector, HttpClient, HttpError};
    use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::trace::{BatchSpanProcessor, SdkTracer, SdkTracerProvider};
    use opentelemetry_sdk::Resource;
    use std::time::{Duration, SystemTime};

    pub struct Otel {
        provider: SdkTracerProvider,
        tracer: SdkTracer,
    }

    impl Otel {
        pub fn start(cfg: &OtelConfig, build: &BuildInfo) -> anyhow::Result<Self> {
            let client = Client {
                http: reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .redirect(reqwest::redirect::Policy::none())
                    .build()?,
                runtime: tokio::runtime::Handle::current(),
            };
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(match cfg.protocol {
                    OtelProtocol::HttpProtobuf => Protocol::HttpBinary,
                    OtelProtocol::HttpJson => Protocol::HttpJson,
                })
                .with_endpoint(cfg.traces_url())
                .with_timeout(Duration::from_secs(10))
                .with_http_client(client)
                .build()
                .map_err(|e| anyhow::anyhow!("cannot build the OTLP trace exporter: {e}"))?;
            let mut resource = Resource::builder()
                .with_service_name(cfg.service_name.clone())
                .with_attribute(KeyValue::new("service.version", build.version.clone()));
            if let Some(c) = &build.commit {
                resource =
                    resource.with_attribute(KeyValue::new("vcs.ref.head.revision", c.clone()));
            }
            let provider = SdkTracerProvider::builder()
                .with_span_processor(BatchSpanProcessor::builder(exporter).build())
                .with_resource(resource.build())
                .build();
            let tracer = provider.tracer("keyplane");
            Ok(Self { provider, tracer })
        }

        pub fn shutdown(&self) {
            if let Err(e) = self.provider.shutdown() {
                tracing::warn!(error = %e, "could not export the last spans");
            }
        }
    }

    impl Tracer for Otel {
        fn start(&self, s: SpanStart<'_>) -> Box<dyn RequestSpan> {
            // A caller's W3C `traceparent` makes this span its child (and its sampled flag
            // decides whether it is recorded).
            let parent = TraceContextPropagator::new().extract(&HeaderExtractor(s.headers));
            let mut attributes = vec![
                KeyValue::new("http.request.method", s.method.as_str().to_string()),
                KeyValue::new("url.path", s.path.to_string()),
                KeyValue::new("keyplane.route", s.route.as_str()),
            ];
            if let Some(id) = s.request_id {
                attributes.push(KeyValue::new(
                    "keyplane.request_id",
                    id.as_str().to_string(),
                ));
            }
            if let Some(a) = s.client_addr {
                attributes.push(KeyValue::new("client.address", a.to_string()));
            }
            let span = self
                .tracer
                .span_builder(format!("{} {}", s.method, s.route.as_str()))
                .with_kind(SpanKind::Server)
                .with_start_time(s.start)
                .with_attributes(attributes)
                .start_with_context(&self.tracer, &parent);
            Box::new(Span {
                cx: parent.with_span(span),
            })
        }
    }

    struct Span {
        cx: Context,
    }

    impl RequestSpan for Span {
        fn traceparent(&self) -> Option<HeaderValue> {
            let mut headers = HeaderMap::new();
            TraceContextPropagator::new()
                .inject_context(&self.cx, &mut HeaderInjector(&mut headers));
            headers.remove("traceparent")
        }

        fn end(self: Box<Self>, status: StatusCode, outcome: Outcome) {
            let span = self.cx.span();
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status.as_u16()),
            ));
            span.set_attribute(KeyValue::new("keyplane.outcome", outcome.as_str()));
            if !outcome.reason().is_empty() {
                span.set_attribute(KeyValue::new("keyplane.reason", outcome.reason()));
            }
            if status.is_server_error() {
                span.set_status(Status::error(status.as_str().to_string()));
            }
            span.end_with_timestamp(SystemTime::now());
        }
    }

    /// The exporter's HTTP client: reqwest (already keyplane's, with rustls) on the server's
    /// runtime. The batch processor runs on a thread of its own and waits for each export
    /// there, so the request is handed to the runtime and awaited from that thread.
    #[derive(Debug)]
    struct Client {
        http: reqwest::Client,
        runtime: tokio::runtime::Handle,
    }

    #[async_trait::async_trait]
    impl HttpClient for Client {
        async fn send_bytes(
            &self,
            request: axum::http::Request<Bytes>,
        ) -> Result<axum::http::Response<Bytes>, HttpError> {
            let http = self.http.clone();
            let (parts, body) = request.into_parts();
            let sent = self.runtime.spawn(async move {
                let resp = http
                    .request(parts.method, parts.uri.to_string())
                    .headers(parts.headers)
                    .body(body)
                    .send()
                    .await?;
                let status = resp.status();
                let headers = resp.headers().clone();
                let body = resp.bytes().await?;
                Ok::<_, reqwest::Error>((status, headers, body))
            });
            let (status, headers, body) = sent.await??;
            let mut resp = axum::http::Response::new(body);
            *resp.status_mut() = status;
            *resp.headers_mut() = headers;
            Ok(resp)
        }
    }
}
