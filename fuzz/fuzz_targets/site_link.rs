//! Every message a site decodes from central: a fake central (a real tonic
//! server) accepts the real site's stream and sends it, after a Welcome,
//! the input's frames, each decoded as a `CentralMessage` (prost) — reconcile
//! page requests, cursor acks, Retry/Discard commands, bulk commands,
//! notification acks and status answers with any content. The site
//! answers, or ends the stream and dials again; it never panics.
#![no_main]

use std::{
    pin::Pin,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use sitelink_commons::contracts::v1::{
    self, central_message,
    site_link_server::{SiteLink, SiteLinkServer},
    CentralMessage, SiteMessage,
};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

type Out = mpsc::Sender<Result<CentralMessage, Status>>;

/// A central that hands each new stream's sender to the fuzz target.
#[derive(Clone, Default)]
struct FakeCentral {
    current: Arc<Mutex<Option<Out>>>,
}

#[tonic::async_trait]
impl SiteLink for FakeCentral {
    type OpenStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<CentralMessage, Status>> + Send>>;

    async fn open(
        &self,
        request: Request<Streaming<SiteMessage>>,
    ) -> Result<Response<Self::OpenStream>, Status> {
        let mut inbound = request.into_inner();
        // Whatever the site sends is read and dropped.
        tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });
        let (tx, rx) = mpsc::channel(256);
        let welcome = CentralMessage {
            correlation: 0,
            body: Some(central_message::Body::Welcome(v1::Welcome {
                central_time_unix_ms: sitelink_commons::now_unix_ms(),
                ..Default::default()
            })),
        };
        let _ = tx.send(Ok(welcome)).await;
        *self.current.lock().unwrap() = Some(tx);
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

struct World {
    rt: tokio::runtime::Runtime,
    central: FakeCentral,
    _dir: tempfile::TempDir,
}

fn world() -> World {
    let rt = sitelink_fuzz::world::runtime();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let central = FakeCentral::default();
    let fake = central.clone();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let addr = listener.local_addr().expect("an address");
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(SiteLinkServer::new(fake))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let cfg = sitelink_site::SiteConfig::parse(
            &format!(
                "[site]\nname = \"fuzz-site\"\ndata_dir = \"data\"\n[admin]\nbind = \"127.0.0.1:0\"\n\
                 [central]\naddresses = [\"http://{addr}\"]\ntoken = \"fuzz\"\n\
                 reconnect_spread_ms = 0\nreconnect_max_ms = 100\n"
            ),
            dir.path(),
        )
        .expect("a configuration");
        let site = sitelink_site::Site::build(cfg).await.expect("a site");
        // Some rows, so that pages and commands have something to act on.
        for _ in 0..20 {
            let _ = site
                .runtime()
                .run_source("seed", "line1", r#"Notify.Send("ops", "s", "b")"#)
                .await;
        }
        tokio::spawn(site.run(tokio_util::sync::CancellationToken::new()));
    });
    World {
        rt,
        central,
        _dir: dir,
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    frames: Vec<Vec<u8>>,
}

fuzz_target!(|input: Input| {
    static WORLD: OnceLock<World> = OnceLock::new();
    let w = WORLD.get_or_init(world);
    let messages: Vec<CentralMessage> = input
        .frames
        .iter()
        .filter_map(|f| CentralMessage::decode(f.as_slice()).ok())
        .collect();
    w.rt.block_on(async {
        // The live stream (the site dials again after one it ended).
        let deadline = Instant::now() + Duration::from_secs(5);
        let tx = loop {
            let live = w
                .central
                .current
                .lock()
                .unwrap()
                .clone()
                .filter(|t| !t.is_closed());
            if let Some(tx) = live {
                break tx;
            }
            assert!(
                Instant::now() < deadline,
                "the site did not dial again within 5 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        for m in messages {
            if tx.send(Ok(m)).await.is_err() {
                return; // the site ended the stream: an answer too
            }
        }
        // Until the site has taken them (or ended the stream).
        let deadline = Instant::now() + Duration::from_secs(1);
        while tx.capacity() < tx.max_capacity() && !tx.is_closed() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
});
