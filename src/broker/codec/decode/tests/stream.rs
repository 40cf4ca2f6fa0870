//! Decoding as a stream: incomplete input, several packets per buffer, the size limit at its
//! boundary, and 200,000 random or mutated inputs that must never panic.

use bytes::BytesMut;

use super::{CONNECT_311, MAX, V5, V311, decode, decode_all, fixtures};
use crate::broker::codec::{encode, encoded_len};

#[test]
fn every_strict_prefix_is_incomplete_and_consumes_nothing() {
    for (v, bytes) in fixtures() {
        for len in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..len]);
            assert_eq!(
                decode(&mut buf, v, MAX),
                Ok(None),
                "prefix {len} of {bytes:02X?}"
            );
            assert_eq!(&buf[..], &bytes[..len]);
        }
    }
}

#[test]
fn several_packets_in_one_buffer_decode_one_at_a_time() {
    for version in [V311, V5] {
        let packets: Vec<Vec<u8>> = fixtures()
            .into_iter()
            .filter(|(v, _)| *v == version)
            .map(|(_, b)| b)
            .collect();
        let mut buf = BytesMut::from(&packets.concat()[..]);
        for bytes in &packets {
            let before = buf.len();
            let packet = decode(&mut buf, version, MAX)
                .expect("valid")
                .expect("complete");
            assert_eq!(before - buf.len(), bytes.len());
            assert_eq!(decode_all(bytes, version), Ok(packet));
        }
        assert!(buf.is_empty());
        assert_eq!(decode(&mut buf, version, MAX), Ok(None));
    }
}

#[test]
fn packet_of_exactly_the_maximum_size_is_accepted() {
    let mut buf = BytesMut::from(CONNECT_311);
    assert!(
        decode(&mut buf, V311, CONNECT_311.len())
            .expect("fits")
            .is_some()
    );
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

/// Flips, overwrites, inserts, deletes or truncates a few bytes of a valid packet. In-place
/// changes are the most likely, so that many mutants still frame correctly.
fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(3) {
        let at = rng.below(bytes.len() + 1);
        match rng.below(10) {
            0..=4 if at < bytes.len() => bytes[at] ^= 1 << rng.below(8),
            5..=6 if at < bytes.len() => bytes[at] = rng.byte(),
            7 => bytes.insert(at, rng.byte()),
            8 if at < bytes.len() => {
                bytes.remove(at);
            }
            _ => bytes.truncate(at),
        }
    }
}

#[test]
fn random_and_mutated_input_never_panics() {
    let corpus = fixtures();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut packets, mut incomplete, mut errors) = (0, 0, 0);
    for i in 0..200_000 {
        let mut bytes = if i % 2 == 0 {
            (0..rng.below(48)).map(|_| rng.byte()).collect()
        } else {
            corpus[rng.below(corpus.len())].1.clone()
        };
        if i % 2 == 1 {
            mutate(&mut rng, &mut bytes);
        }
        let version = if rng.below(2) == 0 { V311 } else { V5 };
        let max = if rng.below(4) == 0 { 16 } else { MAX };
        let mut buf = BytesMut::from(&bytes[..]);
        // Keep decoding: a mutation may leave several packets, or a packet and a fragment.
        loop {
            let packet = match decode(&mut buf, version, max) {
                Ok(Some(packet)) => packet,
                Ok(None) => {
                    assert_eq!(
                        &bytes[bytes.len() - buf.len()..],
                        &buf[..],
                        "Ok(None) consumed"
                    );
                    incomplete += 1;
                    break;
                }
                Err(_) => {
                    errors += 1;
                    break;
                }
            };
            packets += 1;
            let mut out = BytesMut::new();
            encode(&packet, version, &mut out);
            assert_eq!(out.len(), encoded_len(&packet, version));
            assert_eq!(decode(&mut out, version, usize::MAX), Ok(Some(packet)));
            assert!(out.is_empty());
        }
    }
    // The run exercised every outcome, not just the first-byte checks.
    eprintln!("{packets} packets, {incomplete} incomplete, {errors} errors");
    assert!(packets > 5_000 && incomplete > 10_000 && errors > 10_000);
}
