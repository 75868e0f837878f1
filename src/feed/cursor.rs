//! Feed positions and the opaque cursors that carry them to clients.
//!
//! A position is a place in the feed's order `(tx_id, id)`: everything at or before it has been
//! delivered (or skipped by the filter). A watermark `W` read from the database is the position
//! `(W, 0)`: every event of a transaction below `W` is known, and no event can have id 0.
//!
//! A cursor is the base64url text of a versioned binary record, bound to its tenant by a
//! fingerprint and sealed by a checksum, so a mistyped, truncated or foreign cursor is refused
//! rather than resumed from the wrong place:
//!
//! ```text
//! version 1 (1 byte) · tenant fingerprint (8) · tx (8) · id (8)
//!   · snapshot flag (1) [· xmin (8) · xmax (8) · count (2) · xip (8 each)] · checksum (4)
//! ```
//!
//! The snapshot part is present after a `snapshot` start while the tail is still inside the
//! snapshot's transaction range: it names the transactions whose changes the snapshot already
//! showed, so they are not sent again. A later version may replace the single position by a
//! vector of per-shard positions.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest as _, Sha256};

use crate::domain::TenantId;

/// A place in the feed's `(tx_id, id)` order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position {
    pub tx: u64,
    pub id: i64,
}

impl Position {
    pub const START: Self = Self { tx: 0, id: 0 };

    /// The position of a watermark: just before every event of transaction `tx` and later.
    pub fn watermark(tx: u64) -> Self {
        Self { tx, id: 0 }
    }
}

/// The transactions a snapshot saw, in Postgres' `pg_snapshot` terms: every transaction below
/// `xmin`, and those from `xmin` to below `xmax` except the ones in progress (`xip`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenBySnapshot {
    pub xmin: u64,
    pub xmax: u64,
    pub xip: Vec<u64>,
}

impl SeenBySnapshot {
    /// Parses `pg_snapshot`'s text form `xmin:xmax:xip,xip,…`.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.splitn(3, ':');
        let xmin = parts.next()?.parse().ok()?;
        let xmax = parts.next()?.parse().ok()?;
        let xip = match parts.next()? {
            "" => Vec::new(),
            list => list
                .split(',')
                .map(|xid| xid.parse().ok())
                .collect::<Option<Vec<u64>>>()?,
        };
        (xmin <= xmax).then_some(Self { xmin, xmax, xip })
    }

    /// Whether the snapshot already showed the changes of transaction `tx`.
    pub fn saw(&self, tx: u64) -> bool {
        tx < self.xmin || (tx < self.xmax && !self.xip.contains(&tx))
    }

    /// Whether events at `position` and after can still be ones the snapshot saw. An event's
    /// ordering key is at least its writer's id, and above it only when the writer waited for a
    /// transaction that got its id later: one the snapshot cannot have seen, nor then the
    /// writer. So past `xmax` in key order nothing was seen.
    pub fn matters_after(&self, position: Position) -> bool {
        position.tx < self.xmax
    }
}

/// Where a stream stands: its position, and the snapshot whose changes it must not repeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub position: Position,
    pub snapshot: Option<SeenBySnapshot>,
}

impl Cursor {
    pub fn at(position: Position) -> Self {
        Self {
            position,
            snapshot: None,
        }
    }

    /// Moves to `position`, forgetting the snapshot once it can no longer matter.
    pub fn advance(&mut self, position: Position) {
        if position > self.position {
            self.position = position;
        }
        if self
            .snapshot
            .as_ref()
            .is_some_and(|snapshot| !snapshot.matters_after(self.position))
        {
            self.snapshot = None;
        }
    }

    /// Whether an event written by transaction `writer_tx` is one the snapshot already showed.
    pub fn already_seen(&self, writer_tx: u64) -> bool {
        self.snapshot
            .as_ref()
            .is_some_and(|snapshot| snapshot.saw(writer_tx))
    }

    pub fn encode(&self, tenant: &TenantId) -> String {
        let mut bytes = Vec::with_capacity(40);
        bytes.push(VERSION);
        bytes.extend_from_slice(&fingerprint(tenant));
        bytes.extend_from_slice(&self.position.tx.to_be_bytes());
        bytes.extend_from_slice(&self.position.id.to_be_bytes());
        match &self.snapshot {
            None => bytes.push(0),
            Some(snapshot) => {
                bytes.push(1);
                bytes.extend_from_slice(&snapshot.xmin.to_be_bytes());
                bytes.extend_from_slice(&snapshot.xmax.to_be_bytes());
                // A snapshot lists at most one xid per server process, far below 65,535.
                let count = u16::try_from(snapshot.xip.len()).unwrap_or(u16::MAX);
                bytes.extend_from_slice(&count.to_be_bytes());
                for xid in snapshot.xip.iter().take(usize::from(count)) {
                    bytes.extend_from_slice(&xid.to_be_bytes());
                }
            }
        }
        let checksum = checksum(&bytes);
        bytes.extend_from_slice(&checksum);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Reads a cursor of `tenant`. The error says what is wrong, for a field violation.
    pub fn decode(text: &str, tenant: &TenantId) -> Result<Self, &'static str> {
        const MALFORMED: &str = "is not a cursor of this service (copy it whole from a message)";
        let bytes = URL_SAFE_NO_PAD
            .decode(text.trim().as_bytes())
            .map_err(|_| MALFORMED)?;
        let (body, sum) = bytes.split_last_chunk::<4>().ok_or(MALFORMED)?;
        if checksum(body) != *sum {
            return Err(MALFORMED);
        }
        let mut reader = Reader(body);
        if reader.byte()? != VERSION {
            return Err("has a version this server does not know");
        }
        if reader.array::<8>()? != fingerprint(tenant) {
            return Err("belongs to another tenant");
        }
        let position = Position {
            tx: u64::from_be_bytes(reader.array()?),
            id: i64::from_be_bytes(reader.array()?),
        };
        let snapshot = match reader.byte()? {
            0 => None,
            1 => {
                let xmin = u64::from_be_bytes(reader.array()?);
                let xmax = u64::from_be_bytes(reader.array()?);
                let count = u16::from_be_bytes(reader.array()?);
                let xip = (0..count)
                    .map(|_| reader.array().map(u64::from_be_bytes))
                    .collect::<Result<Vec<_>, _>>()?;
                Some(SeenBySnapshot { xmin, xmax, xip })
            }
            _ => return Err(MALFORMED),
        };
        if !reader.0.is_empty() {
            return Err(MALFORMED);
        }
        Ok(Self { position, snapshot })
    }
}

const VERSION: u8 = 1;

fn fingerprint(tenant: &TenantId) -> [u8; 8] {
    let digest = Sha256::new()
        .chain_update(b"callstore.v1.feed\0")
        .chain_update(tenant.as_str().as_bytes())
        .finalize();
    let mut fingerprint = [0; 8];
    fingerprint.copy_from_slice(&digest[..8]);
    fingerprint
}

fn checksum(bytes: &[u8]) -> [u8; 4] {
    let digest = Sha256::digest(bytes);
    let mut sum = [0; 4];
    sum.copy_from_slice(&digest[..4]);
    sum
}

struct Reader<'bytes>(&'bytes [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, &'static str> {
        Ok(self.array::<1>()?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], &'static str> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or("is truncated (copy it whole from a message)")?;
        self.0 = rest;
        Ok(*head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str) -> TenantId {
        TenantId::parse(name).expect("valid tenant")
    }

    #[test]
    fn cursors_round_trip_with_and_without_a_snapshot() {
        let acme = tenant("acme");
        let plain = Cursor::at(Position { tx: 812, id: 40 });
        assert_eq!(Cursor::decode(&plain.encode(&acme), &acme), Ok(plain));

        let after_snapshot = Cursor {
            position: Position::watermark(800),
            snapshot: Some(SeenBySnapshot {
                xmin: 800,
                xmax: 815,
                xip: vec![803, 811],
            }),
        };
        let text = after_snapshot.encode(&acme);
        assert!(
            text.bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
        );
        assert_eq!(Cursor::decode(&text, &acme), Ok(after_snapshot));
    }

    #[test]
    fn foreign_altered_and_garbled_cursors_are_refused() {
        let acme = tenant("acme");
        let text = Cursor::at(Position { tx: 9, id: 3 }).encode(&acme);
        assert_eq!(
            Cursor::decode(&text, &tenant("globex")),
            Err("belongs to another tenant")
        );
        for bad in ["", "not-a-cursor", "%%%", &text[..text.len() - 2]] {
            assert!(Cursor::decode(bad, &acme).is_err(), "{bad:?} is refused");
        }
        // Any single changed character breaks the checksum.
        for index in 0..text.len() {
            let mut altered = text.clone().into_bytes();
            altered[index] = if altered[index] == b'A' { b'B' } else { b'A' };
            let altered = String::from_utf8(altered).expect("ASCII");
            assert!(
                Cursor::decode(&altered, &acme).is_err(),
                "{altered} is refused"
            );
        }
    }

    #[test]
    fn a_snapshot_saw_committed_transactions_below_xmax_only() {
        let seen = SeenBySnapshot::parse("100:105:101,103").expect("parses");
        assert_eq!(seen.xip, [101, 103]);
        assert!(seen.saw(99));
        assert!(seen.saw(100));
        assert!(!seen.saw(101));
        assert!(seen.saw(102));
        assert!(!seen.saw(103));
        assert!(seen.saw(104));
        assert!(!seen.saw(105));
        assert_eq!(
            SeenBySnapshot::parse("7:7:"),
            Some(SeenBySnapshot {
                xmin: 7,
                xmax: 7,
                xip: Vec::new()
            })
        );
        assert_eq!(SeenBySnapshot::parse("9:7:"), None);
        assert_eq!(SeenBySnapshot::parse("x:7:"), None);
    }

    #[test]
    fn advancing_past_the_snapshot_forgets_it() {
        let mut cursor = Cursor {
            position: Position::watermark(100),
            snapshot: SeenBySnapshot::parse("100:105:101"),
        };
        assert!(cursor.already_seen(102));
        assert!(!cursor.already_seen(101));
        cursor.advance(Position { tx: 104, id: 7 });
        assert!(cursor.snapshot.is_some());
        cursor.advance(Position::watermark(105));
        assert_eq!(cursor.snapshot, None);
        assert!(!cursor.already_seen(102));
        // Never backwards.
        cursor.advance(Position { tx: 1, id: 1 });
        assert_eq!(cursor.position, Position::watermark(105));
    }
}
