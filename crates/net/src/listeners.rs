//! What every port applies to the connections it accepts (SPEC §6
//! guarantee 7): a cap on how many are open at once, and a deadline by
//! which a connection must have shown it is real.
//!
//! Main types: [`GuardedListener`] (accepts; over the cap a new connection
//! is closed at once, and a warning says so at most every 10 s) and
//! [`GuardedStream`] (the accepted socket, holding its place under the cap
//! until it is dropped).
//!
//! The per-address cap: one client address may hold at most
//! [`ConnectionLimits::max_per_address`] of them, so one address cannot take
//! every slot. On the HTTP ports it counts every open connection
//! ([`PerAddress::WhileOpen`]); on the link it counts connections that have
//! not authenticated yet ([`PerAddress::UntilEstablished`]), because many
//! sites behind one NAT share an address once they are in.
//!
//! The deadline: a [`GuardedStream`] fails its reads with `TimedOut` once
//! [`ConnectionLimits::setup_timeout`] has passed unless something marked
//! it [`Established`] first. The site link marks a connection established
//! when a stream on it has authenticated (`communication::LinkService`), so
//! a silent socket, a stalled TLS handshake, a partial HTTP/2 preface or a
//! peer that never authenticates is closed after the timeout; an
//! authenticated link is then watched by HTTP/2 keepalive pings instead.
//! The HTTP ports (central's, the site's admin API) mark a connection
//! established once it is usable (after the TLS handshake, or at once) and
//! leave the rest to hyper's header-read timeout, which also bounds the idle
//! time between two requests.

use std::{
    collections::HashMap,
    future::Future as _,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};

/// The limits of one port.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Connections open at once; more are closed as they arrive.
    pub max_connections: usize,
    /// Connections one client address may hold at once (counted as
    /// `per_address` says); more from it are closed as they arrive.
    pub max_per_address: usize,
    /// Which connections count against `max_per_address`.
    pub per_address: PerAddress,
    /// A connection not established by then is closed. On the HTTP ports
    /// it is also the time a request's headers, and then its body, have to
    /// arrive.
    pub setup_timeout: Duration,
}

/// Which connections of an address count against its cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PerAddress {
    /// Every open connection (the HTTP ports).
    WhileOpen,
    /// Connections not yet established (the link: until a stream on the
    /// connection has authenticated).
    UntilEstablished,
}

/// Set once a connection has proved itself (the link: an authenticated
/// stream on it); from then on the setup deadline no longer applies, and
/// with [`PerAddress::UntilEstablished`] the connection no longer counts
/// against its address's cap.
#[derive(Clone, Debug, Default)]
pub struct Established(Arc<EstablishedInner>);

#[derive(Debug, Default)]
struct EstablishedInner {
    set: AtomicBool,
    /// The address place, with [`PerAddress::UntilEstablished`]: given back
    /// on `mark` (or when the stream is dropped, whichever comes first).
    place: Mutex<Option<AddressPlace>>,
}

impl Established {
    pub fn mark(&self) {
        self.0.set.store(true, Ordering::Relaxed);
        self.0.place.lock().expect("place lock").take();
    }

    pub fn is_set(&self) -> bool {
        self.0.set.load(Ordering::Relaxed)
    }
}

/// Open (or unestablished) connections per client address.
type AddressCounts = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// One connection's place under its address's cap; given back on drop.
#[derive(Debug)]
struct AddressPlace {
    counts: AddressCounts,
    ip: IpAddr,
}

impl AddressPlace {
    /// A place for `ip`, or `None` when it holds `max` already.
    fn take(counts: &AddressCounts, ip: IpAddr, max: usize) -> Option<Self> {
        let mut map = counts.lock().expect("address lock");
        let n = map.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Self {
            counts: counts.clone(),
            ip,
        })
    }
}

impl Drop for AddressPlace {
    fn drop(&mut self) {
        let mut map = self.counts.lock().expect("address lock");
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// What a request can learn of its connection (a request extension on the
/// link, through tonic's `Connected`).
#[derive(Clone, Debug)]
pub struct ConnectionInfo {
    pub peer: SocketAddr,
    pub established: Established,
}

pub struct GuardedListener {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    addresses: AddressCounts,
    limits: ConnectionLimits,
    what: &'static str,
    last_warning: Mutex<Option<Instant>>,
    last_address_warning: Mutex<Option<Instant>>,
}

impl GuardedListener {
    pub fn new(listener: TcpListener, limits: ConnectionLimits, what: &'static str) -> Self {
        Self {
            listener,
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            addresses: AddressCounts::default(),
            limits,
            what,
            last_warning: Mutex::new(None),
            last_address_warning: Mutex::new(None),
        }
    }

    pub fn limits(&self) -> ConnectionLimits {
        self.limits
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The next connection within the caps (those beyond are closed).
    pub async fn accept(&self) -> io::Result<GuardedStream> {
        loop {
            let (socket, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                // Out of descriptors, or the peer gave up before accept:
                // try again shortly rather than end the server.
                Err(e) if is_transient_accept_error(&e) => {
                    tracing::warn!(port = self.what, error = %e, "accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            // The address first: a full address must not cost a global slot.
            let Some(place) = AddressPlace::take(
                &self.addresses,
                peer.ip().to_canonical(),
                self.limits.max_per_address,
            ) else {
                self.warn_address_full(peer.ip());
                drop(socket);
                continue;
            };
            let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                self.warn_full();
                drop(socket);
                continue;
            };
            let _ = socket.set_nodelay(true);
            let established = Established::default();
            let place = match self.limits.per_address {
                PerAddress::WhileOpen => Some(place),
                PerAddress::UntilEstablished => {
                    *established.0.place.lock().expect("place lock") = Some(place);
                    None
                }
            };
            return Ok(GuardedStream {
                socket,
                _slot: slot,
                _place: place,
                info: ConnectionInfo { peer, established },
                deadline: Some(Box::pin(tokio::time::sleep(self.limits.setup_timeout))),
            });
        }
    }

    /// Waits until every accepted connection has been dropped.
    pub async fn drained(&self) {
        let all = u32::try_from(self.limits.max_connections).unwrap_or(u32::MAX);
        let _ = self.slots.acquire_many(all).await;
    }

    /// The connections as a stream (for tonic's `serve_with_incoming`).
    pub fn into_stream(self) -> impl futures::Stream<Item = io::Result<GuardedStream>> {
        futures::stream::unfold(self, |l| async move {
            let next = l.accept().await;
            Some((next, l))
        })
    }

    fn warn_full(&self) {
        if due(&self.last_warning) {
            tracing::warn!(
                port = self.what,
                max = self.limits.max_connections,
                "connection cap reached; new connections are closed until some end"
            );
        }
    }

    fn warn_address_full(&self, ip: IpAddr) {
        if due(&self.last_address_warning) {
            tracing::warn!(
                port = self.what,
                %ip,
                max = self.limits.max_per_address,
                "per-address connection cap reached; new connections from this address are closed \
                 until some end"
            );
        }
    }
}

/// Whether a rate-limited warning is due (at most one every 10 s).
fn due(last: &Mutex<Option<Instant>>) -> bool {
    let mut last = last.lock().expect("warning lock");
    let due = last.is_none_or(|t| t.elapsed() > Duration::from_secs(10));
    if due {
        *last = Some(Instant::now());
    }
    due
}

fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    ) || e
        .raw_os_error()
        .is_some_and(|code| code == 24 || code == 23) // EMFILE, ENFILE
}

/// An accepted connection: its places under the caps, and its setup
/// deadline.
pub struct GuardedStream {
    socket: TcpStream,
    _slot: OwnedSemaphorePermit,
    /// With [`PerAddress::WhileOpen`]; otherwise the place is held by
    /// `info.established` until it is marked, and given back in `drop`.
    _place: Option<AddressPlace>,
    info: ConnectionInfo,
    /// Until the connection is established; `None` after.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl GuardedStream {
    pub fn info(&self) -> &ConnectionInfo {
        &self.info
    }

    /// `Err(TimedOut)` once the deadline has passed without the connection
    /// being established; registers the deadline's wake-up otherwise.
    fn check_deadline(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if let Some(deadline) = &mut self.deadline {
            if self.info.established.is_set() {
                self.deadline = None;
            } else if deadline.as_mut().poll(cx).is_ready() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection not established within the setup timeout",
                ));
            }
        }
        Ok(())
    }
}

impl Drop for GuardedStream {
    fn drop(&mut self) {
        // `Established` may outlive the stream in a request's extensions;
        // the address place must not.
        self.info
            .established
            .0
            .place
            .lock()
            .expect("place lock")
            .take();
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        me.check_deadline(cx)?;
        Pin::new(&mut me.socket).poll_read(cx, buf)
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().socket).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().socket).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.socket.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for GuardedStream {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        self.info.clone()
    }
}
