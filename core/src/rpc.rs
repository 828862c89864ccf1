//! gRPC plumbing: serving and dialing tonic services over Unix sockets (inside
//! a node) and TCP (between nodes), and the cluster token every call carries.
//!
//! An address is a socket path when it starts with `/`, otherwise `host:port`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use parking_lot::RwLock;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use crate::error::{Error, Result};
use crate::proto::{core_worker_service_client::CoreWorkerServiceClient, node_service_client::NodeServiceClient};

/// Metadata key of the cluster token.
const TOKEN_KEY: &str = "x-rayforge-token";

static TOKEN: RwLock<Option<MetadataValue<Ascii>>> = RwLock::new(None);

/// Sets this process's cluster token: sent with every call, and required of
/// every caller of the services this process serves.
pub(crate) fn set_token(token: &str) -> Result<()> {
    let v = MetadataValue::try_from(token)
        .map_err(|_| Error::InvalidArgument("the cluster token must be printable ASCII".into()))?;
    *TOKEN.write() = Some(v);
    Ok(())
}

/// The token of this process, if it is part of a secured cluster.
pub(crate) fn token() -> Option<String> {
    TOKEN.read().as_ref().and_then(|v| v.to_str().ok().map(str::to_string))
}

/// Client side: adds the token to each call.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Auth;

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: Request<()>) -> std::result::Result<Request<()>, Status> {
        if let Some(t) = TOKEN.read().as_ref() {
            req.metadata_mut().insert(TOKEN_KEY, t.clone());
        }
        Ok(req)
    }
}

/// Server side: refuses calls without this process's token.
pub(crate) fn check_token(req: Request<()>) -> std::result::Result<Request<()>, Status> {
    let expected = TOKEN.read();
    match expected.as_ref() {
        None => Ok(req),
        Some(t)
            if req
                .metadata()
                .get(TOKEN_KEY)
                .is_some_and(|given| crate::http::same_bytes(given.as_bytes(), t.as_bytes())) =>
        {
            Ok(req)
        }
        Some(_) => Err(Status::unauthenticated(
            "missing or wrong cluster token (`rayforge token` on the head's machine prints it; pass it as RAYFORGE_TOKEN)",
        )),
    }
}

/// A channel whose calls carry the cluster token.
pub(crate) type Chan = InterceptedService<Channel, Auth>;

/// Lazily connecting channels by address, opened once and shared.
#[derive(Default)]
pub(crate) struct ChannelCache(parking_lot::Mutex<std::collections::HashMap<String, Chan>>);

impl ChannelCache {
    /// The channel to `addr`, opened on first use (call inside a runtime:
    /// a lazy channel spawns its connection task there).
    pub(crate) fn get(&self, addr: &str) -> Result<Chan> {
        let mut m = self.0.lock();
        if let Some(c) = m.get(addr) {
            return Ok(c.clone());
        }
        let c = channel(addr)?;
        m.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// Drops the channel to `addr` (its peer went away).
    pub(crate) fn forget(&self, addr: &str) {
        self.0.lock().remove(addr);
    }
}

/// Whether `addr` names a TCP endpoint rather than a Unix socket.
pub(crate) fn is_tcp(addr: &str) -> bool {
    !addr.starts_with('/')
}

/// Binds a Unix socket for a gRPC server, replacing a stale socket file.
pub(crate) fn bind_uds(path: &Path) -> Result<tokio_stream::wrappers::UnixListenerStream> {
    let _ = std::fs::remove_file(path);
    let l = tokio::net::UnixListener::bind(path).map_err(|e| Error::io(format!("binding {}", path.display()), e))?;
    Ok(tokio_stream::wrappers::UnixListenerStream::new(l))
}

/// Binds a TCP listener (`host:port`, port 0 for any free port); returns the
/// incoming stream and the bound address.
/// The address others should dial for a listener bound at `local`: the
/// advertised host (see `ENV_ADVERTISE_HOST`) with its port, when set.
pub(crate) fn advertised(local: SocketAddr) -> String {
    match std::env::var(crate::session::ENV_ADVERTISE_HOST) {
        Ok(h) if !h.trim().is_empty() => format!("{}:{}", h.trim(), local.port()),
        _ => local.to_string(),
    }
}

/// Connections accepted by [`bind_tcp`].
pub(crate) type Incoming =
    std::pin::Pin<Box<dyn futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> + Send>>;

/// Listens on `addr`. Accepted connections send small writes at once
/// (TCP_NODELAY): tonic sets it only on listeners it binds itself, and
/// without it a response's last frame waited for the client's delayed ACK,
/// 40 ms per call.
pub(crate) async fn bind_tcp(addr: &str) -> Result<(Incoming, SocketAddr)> {
    use futures::StreamExt;
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::io(format!("binding {addr}"), e))?;
    let local = l.local_addr().map_err(|e| Error::io("reading a bound address", e))?;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(l).map(|s| {
        s.inspect(|s| {
            let _ = s.set_nodelay(true);
        })
    });
    Ok((Box::pin(incoming), local))
}

/// The endpoint settings every channel uses; TCP endpoints speak TLS when
/// this process is configured for it ([`crate::tls`]).
fn endpoint(addr: &str) -> Result<Endpoint> {
    let tls = if is_tcp(addr) { crate::tls::settings()? } else { None };
    // For Unix sockets the URI is a placeholder: the connector dials the path.
    let uri = match (is_tcp(addr), &tls) {
        (true, Some(_)) => format!("https://{addr}"),
        (true, None) => format!("http://{addr}"),
        (false, _) => "http://[::]:50051".to_string(),
    };
    let mut ep = Endpoint::try_from(uri).map_err(|e| Error::InvalidArgument(format!("bad address `{addr}`: {e}")))?;
    if let Some(t) = &tls {
        let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).trim_matches(['[', ']']);
        let cfg = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(t.ca_pem()))
            .domain_name(t.server_name(host));
        ep = ep
            .tls_config(cfg)
            .map_err(|e| Error::InvalidArgument(format!("TLS to `{addr}`: {e}")))?;
    }
    Ok(ep
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(16 << 20))
        // Object chunks (1 MiB) then travel in one or a few frames, not 64.
        .max_frame_size(Some(1 << 20)))
}

/// The server settings every service uses: the same flow-control windows as
/// the client side. HTTP/2's flood protection allows a connection as many
/// small unread DATA frames as half its window holds, so a small window made
/// a burst of a few thousand small calls from one process (each one DATA
/// frame) read as an attack, and the whole connection was closed.
/// [`server`] for a TCP listener: with TLS when this process has a
/// certificate ([`crate::tls`]).
pub(crate) fn tcp_server() -> Result<tonic::transport::Server> {
    let s = server();
    let Some(t) = crate::tls::settings()? else { return Ok(s) };
    let Some((cert, key)) = t.identity_pem() else {
        return Err(Error::InvalidArgument(format!(
            "TLS: this process serves gRPC but has no certificate (${}, ${})",
            crate::tls::ENV_CERT,
            crate::tls::ENV_KEY
        )));
    };
    let identity = tonic::transport::Identity::from_pem(cert, key);
    s.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
        .map_err(|e| Error::InvalidArgument(format!("TLS: {e}")))
}

pub(crate) fn server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .max_frame_size(Some(1 << 20))
}

/// A connector dialing the Unix socket at `path`.
fn connector(
    path: &str,
) -> impl tower::Service<
    tonic::transport::Uri,
    Response = TokioIo<tokio::net::UnixStream>,
    Error = std::io::Error,
    Future = impl std::future::Future<Output = std::io::Result<TokioIo<tokio::net::UnixStream>>> + Send,
> + Send
       + Clone
       + 'static {
    let p = PathBuf::from(path);
    tower::service_fn(move |_: tonic::transport::Uri| {
        let p = p.clone();
        async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?)) }
    })
}

/// Opens a lazily connecting channel to `addr`.
pub(crate) fn channel(addr: &str) -> Result<Chan> {
    let ep = endpoint(addr)?;
    let ch = if is_tcp(addr) {
        ep.connect_lazy()
    } else {
        ep.connect_with_connector_lazy(connector(addr))
    };
    Ok(InterceptedService::new(ch, Auth))
}

/// Connects eagerly, failing fast when nobody listens.
pub(crate) async fn connect(addr: &str) -> Result<Chan> {
    let ep = endpoint(addr)?;
    let ch = if is_tcp(addr) {
        ep.connect().await
    } else {
        ep.connect_with_connector(connector(addr)).await
    }
    .map_err(|e| Error::io(format!("connecting to {addr}"), e))?;
    Ok(InterceptedService::new(ch, Auth))
}

/// The largest message a node or worker sends or accepts (Ray's
/// `max_grpc_message_size` is the same): values travel inline only up to
/// 100 KiB and objects in chunks, so only a runaway caller reaches it, and
/// it gets an error instead of making the receiver buffer without bound.
pub(crate) const MAX_MESSAGE_BYTES: usize = 512 << 20;

/// A client of a process's CoreWorkerService over `ch`.
pub(crate) fn worker_client(ch: Chan) -> CoreWorkerServiceClient<Chan> {
    CoreWorkerServiceClient::new(ch)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// A client of a node's NodeService over `ch`.
pub(crate) fn node_client(ch: Chan) -> NodeServiceClient<Chan> {
    NodeServiceClient::new(ch)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}
