//! [`TcpProxy`]: a fault-injecting TCP proxy on 127.0.0.1 (random port).

use std::{net::SocketAddr, sync::Arc};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        tcp::{OwnedReadHalf, OwnedWriteHalf},
        TcpListener,
    },
    sync::watch,
};

/// What the proxy does with its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Forward,
    /// Connections stay open but nothing moves: a silent link.
    Paused,
    /// Connections are closed, new ones too.
    Cut,
}

/// Forwards connections to `upstream` while enabled. [`TcpProxy::cut`]
/// closes every open connection and makes new ones close at once (the client
/// sees a reset or EOF); [`TcpProxy::pause`] keeps them open but holds every
/// byte (neither side hears anything: a silent link); [`TcpProxy::heal`]
/// restores forwarding (after a pause, the held bytes go through).
pub struct TcpProxy {
    addr: SocketAddr,
    state: Arc<watch::Sender<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(watch::channel(State::Forward).0);
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if *st.borrow() == State::Cut {
                    drop(inbound);
                    continue;
                }
                let st = st.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (in_r, in_w) = inbound.into_split();
                    let (out_r, out_w) = outbound.into_split();
                    tokio::select! {
                        () = pump(in_r, out_w, st.subscribe()) => {}
                        () = pump(out_r, in_w, st.subscribe()) => {}
                    }
                });
            }
        });
        Self { addr, state, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn cut(&self) {
        self.state.send_replace(State::Cut);
    }

    pub fn pause(&self) {
        self.state.send_replace(State::Paused);
    }

    pub fn heal(&self) {
        self.state.send_replace(State::Forward);
    }
}

/// Copies one direction while forwarding; holds what it read while paused;
/// returns (closing both directions) on EOF, an error or a cut.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut state: watch::Receiver<State>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = state.wait_for(|s| *s == State::Cut) => return,
        };
        match state.wait_for(|s| *s != State::Paused).await {
            Ok(s) if *s == State::Forward => {}
            _ => return,
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
