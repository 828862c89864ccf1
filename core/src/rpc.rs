//! gRPC plumbing: serving and dialing tonic services over Unix sockets.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

use crate::error::{Error, Result};

/// Binds a Unix socket for a gRPC server, replacing a stale socket file.
pub(crate) fn bind_uds(path: &Path) -> Result<tokio_stream::wrappers::UnixListenerStream> {
    let _ = std::fs::remove_file(path);
    let l = tokio::net::UnixListener::bind(path).map_err(|e| Error::io(format!("binding {}", path.display()), e))?;
    Ok(tokio_stream::wrappers::UnixListenerStream::new(l))
}

/// The endpoint settings every channel uses (the URI is a placeholder: the
/// connector dials the socket path).
fn endpoint() -> Result<Endpoint> {
    Ok(Endpoint::try_from("http://[::]:50051")
        .map_err(|e| Error::Internal(format!("endpoint: {e}")))?
        .connect_timeout(Duration::from_secs(10))
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(16 << 20)))
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

/// Opens a lazily connecting channel to a Unix socket path.
pub(crate) fn uds_channel(path: &str) -> Result<Channel> {
    Ok(endpoint()?.connect_with_connector_lazy(connector(path)))
}

/// Connects eagerly, failing fast when nobody listens.
pub(crate) async fn uds_connect(path: &str) -> Result<Channel> {
    endpoint()?
        .connect_with_connector(connector(path))
        .await
        .map_err(|e| Error::io(format!("connecting to {path}"), e))
}
