//! Fuzz target for the MQTT codec: `cargo +nightly fuzz run mqtt_decode`.
//!
//! Arbitrary bytes are decoded as a stream of packets for both protocol versions. Decoding must
//! never panic, `Ok(None)` must consume nothing, and every decoded packet must survive
//! encode → decode unchanged, with `encoded_len` equal to the bytes written.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use xmpp_mqtt_bridge::broker::codec::{ProtocolVersion, decode, encode, encoded_len};

/// Small enough that the size limit is exercised, large enough for any fuzz input.
const MAX_PACKET_SIZE: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
        check_stream(data, version);
    }
});

fn check_stream(data: &[u8], version: ProtocolVersion) {
    let mut buf = BytesMut::from(data);
    loop {
        match decode(&mut buf, version, MAX_PACKET_SIZE) {
            Ok(Some(packet)) => {
                let mut out = BytesMut::new();
                encode(&packet, version, &mut out);
                assert_eq!(out.len(), encoded_len(&packet, version), "{packet:?}");
                let again = decode(&mut out, version, usize::MAX);
                assert_eq!(again, Ok(Some(packet)));
                assert!(out.is_empty(), "re-encoded packet not fully consumed");
            }
            Ok(None) => {
                // Incomplete: nothing may have been consumed from what was left.
                assert_eq!(&buf[..], &data[data.len() - buf.len()..]);
                return;
            }
            Err(_) => return,
        }
    }
}
