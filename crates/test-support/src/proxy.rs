//! [`TcpProxy`]: a fault-injecting TCP proxy on 127.0.0.1 (random port).

use std::{net::SocketAddr, sync::Arc};

use tokio::{net::TcpListener, sync::watch};

/// Forwards connections to `upstream` while enabled. [`TcpProxy::cut`]
/// closes every open connection and makes new ones close at once (the client
/// sees a reset or EOF); [`TcpProxy::heal`] restores forwarding.
pub struct TcpProxy {
    addr: SocketAddr,
    enabled: Arc<watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let enabled = Arc::new(watch::channel(true).0);
        let en = enabled.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut rx = en.subscribe();
                if !*rx.borrow() {
                    drop(inbound);
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = rx.wait_for(|on| !*on) => {}
                    }
                });
            }
        });
        Self {
            addr,
            enabled,
            task,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn cut(&self) {
        self.enabled.send_replace(false);
    }

    pub fn heal(&self) {
        self.enabled.send_replace(true);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
