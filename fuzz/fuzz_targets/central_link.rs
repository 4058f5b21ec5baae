//! Every message central decodes and handles from a site's stream: the
//! input is a list of frames, each decoded as a `SiteMessage` (prost) and
//! sent, after a valid Hello (or, when `raw_hello` is set, instead of it),
//! on a real authenticated gRPC stream to a real central — so each message
//! goes through the real session code (telemetry and reconcile ingest,
//! forwarded notifications, command answers, acks). Central answers or
//! closes the stream with a status; it never panics, and the next stream
//! is accepted.
#![no_main]

use std::{sync::OnceLock, time::Duration};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use sitelink_commons::contracts::v1::{self, site_link_client::SiteLinkClient, site_message};
use sitelink_fuzz::world;

#[derive(Arbitrary, Debug)]
struct Input {
    raw_hello: bool,
    frames: Vec<Vec<u8>>,
}

fuzz_target!(|input: Input| {
    static WORLD: OnceLock<world::CentralWorld> = OnceLock::new();
    let w = WORLD.get_or_init(world::CentralWorld::start);
    let mut messages: Vec<v1::SiteMessage> = Vec::new();
    if !input.raw_hello {
        messages.push(v1::SiteMessage {
            correlation: 0,
            body: Some(site_message::Body::Hello(v1::Hello {
                site: "fuzz-site".into(),
                protocol_version: sitelink_central::communication::PROTOCOL_VERSION,
                high_seq: 0,
            })),
        });
    }
    messages.extend(
        input
            .frames
            .iter()
            .filter_map(|f| v1::SiteMessage::decode(f.as_slice()).ok()),
    );
    w.rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", w.link))
            .expect("an endpoint")
            .connect()
            .await
            .expect("central accepts connections");
        let mut client = SiteLinkClient::new(channel);
        let (tx, rx) = tokio::sync::mpsc::channel::<v1::SiteMessage>(messages.len().max(1));
        for m in messages {
            tx.send(m).await.expect("room for every message");
        }
        drop(tx);
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", w.site_token)
                .parse()
                .expect("a header"),
        );
        // Central answers, refuses with a status, or ends the stream.
        if let Ok(resp) = client.open(request).await {
            let mut inbound = resp.into_inner();
            let _ = tokio::time::timeout(Duration::from_millis(300), async {
                while let Ok(Some(_)) = inbound.message().await {}
            })
            .await;
        }
    });
});
