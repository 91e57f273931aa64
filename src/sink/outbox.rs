//! The durable outbox of MQTT alerts: each alert is appended and fsync'd here before it is
//! published, and leaves only once the broker acknowledged it (QoS 1 PUBACK), so a broker
//! outage, a dropped connection or a SIGKILL loses none.
//!
//! The file is a JSON-lines log in the state folder: `{"put": entry}` when an alert enters,
//! `{"ack": id}` when the broker took it, `{"drop": id}` when the bound pushed it out. A torn
//! last line (the process died mid-write) is ignored. The log is rewritten compactly at open
//! and when it has grown well past what it holds.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// What to do with a new alert when the outbox holds `max` undelivered ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FullPolicy {
    /// Drop the oldest undelivered alert to make room (the newest state of the line matters
    /// most after a long outage).
    #[default]
    DropOldest,
    /// Keep what is queued and drop the new alert.
    DropNewest,
}

/// One alert waiting for the broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The alert id (deterministic per frame).
    pub id: String,
    /// The MQTT topic.
    pub topic: String,
    /// The alert JSON.
    pub payload: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Record {
    Put(Entry),
    Ack(String),
    Drop(String),
}

/// What [`Outbox::put`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Put {
    /// Stored; it will be published.
    Stored,
    /// Stored, and the oldest undelivered alert (this id) was dropped to make room.
    StoredDroppingOldest(String),
    /// Not stored: the outbox is full and the policy keeps what is queued.
    DroppedNewest,
    /// This id is already queued or was delivered recently (a frame scored again after a
    /// restart): not sent twice.
    Duplicate,
}

/// Ids of delivered alerts remembered, so that a frame re-scored after a crash is not alerted
/// twice.
const REMEMBERED: usize = 20_000;

/// The outbox.
pub struct Outbox {
    path: PathBuf,
    file: File,
    /// Undelivered, oldest first, each with its sequence number.
    pending: VecDeque<(u64, Entry)>,
    seq_of: HashMap<String, u64>,
    next_seq: u64,
    delivered: VecDeque<String>,
    delivered_set: HashSet<String>,
    records: usize,
    max: usize,
    policy: FullPolicy,
    /// Records beyond what the log holds before it is compacted.
    slack: usize,
}

impl Outbox {
    /// Opens (creating) the outbox at `path`, holding at most `max` undelivered alerts.
    pub fn open(path: &Path, max: usize, policy: FullPolicy) -> anyhow::Result<Outbox> {
        let mut o = Outbox {
            path: path.to_owned(),
            file: open_append(path)?,
            pending: VecDeque::new(),
            seq_of: HashMap::new(),
            next_seq: 0,
            delivered: VecDeque::new(),
            delivered_set: HashSet::new(),
            records: 0,
            max: max.max(1),
            policy,
            slack: 10_000,
        };
        let reader = BufReader::new(File::open(path).with_context(|| format!("outbox {}", path.display()))?);
        let mut torn = 0;
        for line in reader.split(b'\n') {
            let line = line.with_context(|| format!("reading the outbox {}", path.display()))?;
            if line.is_empty() {
                continue;
            }
            match serde_json::from_slice::<Record>(&line) {
                Ok(Record::Put(e)) => {
                    o.insert(e);
                }
                Ok(Record::Ack(id)) => o.remove(&id, true),
                Ok(Record::Drop(id)) => o.remove(&id, false),
                Err(_) => torn += 1,
            }
        }
        if torn > 0 {
            tracing::warn!("outbox {}: {torn} torn line(s) ignored (written when vigil died)", path.display());
        }
        while o.pending.len() > o.max {
            o.pending.pop_front().map(|(_, e)| o.seq_of.remove(&e.id));
        }
        o.compact()?;
        Ok(o)
    }

    fn insert(&mut self, e: Entry) -> bool {
        if self.seq_of.contains_key(&e.id) || self.delivered_set.contains(&e.id) {
            return false;
        }
        self.seq_of.insert(e.id.clone(), self.next_seq);
        self.pending.push_back((self.next_seq, e));
        self.next_seq += 1;
        true
    }

    fn remove(&mut self, id: &str, delivered: bool) {
        if let Some(seq) = self.seq_of.remove(id) {
            let at = self.pending.partition_point(|(s, _)| *s < seq);
            if self.pending.get(at).is_some_and(|(s, _)| *s == seq) {
                self.pending.remove(at);
            }
        }
        if delivered && self.delivered_set.insert(id.to_owned()) {
            self.delivered.push_back(id.to_owned());
            if self.delivered.len() > REMEMBERED
                && let Some(old) = self.delivered.pop_front()
            {
                self.delivered_set.remove(&old);
            }
        }
    }

    fn append(&mut self, r: &Record, sync: bool) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(r).expect("a record serialises");
        line.push(b'\n');
        self.file.write_all(&line).with_context(|| format!("writing the outbox {}", self.path.display()))?;
        if sync {
            self.file.sync_data().with_context(|| format!("syncing the outbox {}", self.path.display()))?;
        }
        self.records += 1;
        Ok(())
    }

    /// Stores an alert durably (written and fsync'd before this returns).
    pub fn put(&mut self, e: Entry) -> anyhow::Result<Put> {
        if self.seq_of.contains_key(&e.id) || self.delivered_set.contains(&e.id) {
            return Ok(Put::Duplicate);
        }
        let mut dropped = None;
        if self.pending.len() >= self.max {
            match self.policy {
                FullPolicy::DropNewest => return Ok(Put::DroppedNewest),
                FullPolicy::DropOldest => {
                    let (_, old) = self.pending.front().cloned().expect("full means not empty");
                    self.append(&Record::Drop(old.id.clone()), false)?;
                    self.remove(&old.id, false);
                    dropped = Some(old.id);
                }
            }
        }
        self.append(&Record::Put(e.clone()), true)?;
        self.insert(e);
        self.maybe_compact()?;
        Ok(match dropped {
            Some(id) => Put::StoredDroppingOldest(id),
            None => Put::Stored,
        })
    }

    /// Records that the broker acknowledged `id`. Not fsync'd: the write survives the
    /// process dying, and if the machine loses power first, the alert is only sent again
    /// under the same id.
    pub fn ack(&mut self, id: &str) -> anyhow::Result<()> {
        if !self.seq_of.contains_key(id) {
            return Ok(());
        }
        self.append(&Record::Ack(id.to_owned()), false)?;
        self.remove(id, true);
        self.maybe_compact()
    }

    /// Undelivered alerts with a sequence number above `after` (all: `None`), oldest first.
    pub fn after(&self, after: Option<u64>, limit: usize) -> Vec<(u64, Entry)> {
        let from = after.map_or(0, |a| self.pending.partition_point(|(s, _)| *s <= a));
        self.pending.range(from..).take(limit).cloned().collect()
    }

    /// Undelivered alerts.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    fn maybe_compact(&mut self) -> anyhow::Result<()> {
        if self.records > 4 * (self.pending.len() + self.delivered.len()) + self.slack {
            self.compact()?;
        }
        Ok(())
    }

    /// Rewrites the log with only what it holds (delivered ids, then pending alerts), through
    /// a temporary file and a rename, so a crash leaves the old or the new log whole.
    fn compact(&mut self) -> anyhow::Result<()> {
        let tmp = self.path.with_extension("compacting");
        let mut out = std::io::BufWriter::new(
            File::create(&tmp).with_context(|| format!("outbox: cannot write {}", tmp.display()))?,
        );
        let mut records = 0;
        for id in &self.delivered {
            serde_json::to_writer(&mut out, &Record::Ack(id.clone()))?;
            out.write_all(b"\n")?;
            records += 1;
        }
        // An ack of an id never put only fills the remembered set on the next open.
        for (_, e) in &self.pending {
            serde_json::to_writer(&mut out, &Record::Put(e.clone()))?;
            out.write_all(b"\n")?;
            records += 1;
        }
        let file = out.into_inner().map_err(|e| anyhow::anyhow!("outbox {}: {e}", tmp.display()))?;
        file.sync_all()?;
        std::fs::rename(&tmp, &self.path).with_context(|| format!("outbox: replacing {}", self.path.display()))?;
        if let Some(dir) = self.path.parent() {
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        self.file = open_append(&self.path)?;
        self.records = records;
        Ok(())
    }
}

fn open_append(path: &Path) -> anyhow::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("outbox folder {}", dir.display()))?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("outbox {}: cannot open it; check the state_dir's permissions", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: usize) -> Entry {
        Entry { id: format!("id{i}"), topic: "t".into(), payload: format!("{{\"n\":{i}}}") }
    }

    #[test]
    fn survives_reopen_keeps_order_and_forgets_acked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.jsonl");
        let mut o = Outbox::open(&path, 100, FullPolicy::DropOldest).unwrap();
        for i in 0..5 {
            assert_eq!(o.put(entry(i)).unwrap(), Put::Stored);
        }
        o.ack("id1").unwrap();
        o.ack("id3").unwrap();
        drop(o);
        // A torn line, as when the process dies mid-write.
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"put\":{\"id\":\"x").unwrap();
        let mut o = Outbox::open(&path, 100, FullPolicy::DropOldest).unwrap();
        let ids: Vec<_> = o.after(None, 10).into_iter().map(|(_, e)| e.id).collect();
        assert_eq!(ids, ["id0", "id2", "id4"]);
        // Delivered and queued ids are not stored twice.
        assert_eq!(o.put(entry(1)).unwrap(), Put::Duplicate);
        assert_eq!(o.put(entry(2)).unwrap(), Put::Duplicate);
        let (seq, _) = o.after(None, 1)[0].clone();
        assert_eq!(o.after(Some(seq), 10).len(), 2);
    }

    #[test]
    fn the_bound_is_explicit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.jsonl");
        let mut o = Outbox::open(&path, 2, FullPolicy::DropOldest).unwrap();
        o.put(entry(0)).unwrap();
        o.put(entry(1)).unwrap();
        assert_eq!(o.put(entry(2)).unwrap(), Put::StoredDroppingOldest("id0".into()));
        let mut n = Outbox::open(&dir.path().join("n.jsonl"), 1, FullPolicy::DropNewest).unwrap();
        n.put(entry(0)).unwrap();
        assert_eq!(n.put(entry(1)).unwrap(), Put::DroppedNewest);
        drop(o);
        let o = Outbox::open(&path, 2, FullPolicy::DropOldest).unwrap();
        assert_eq!(o.after(None, 10).into_iter().map(|(_, e)| e.id).collect::<Vec<_>>(), ["id1", "id2"]);
    }

    #[test]
    fn compaction_keeps_what_matters() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.jsonl");
        let mut o = Outbox::open(&path, 100_000, FullPolicy::DropOldest).unwrap();
        o.slack = 10;
        for i in 0..300 {
            o.put(entry(i)).unwrap_or_else(|e| panic!("{e}"));
            if i % 3 != 0 {
                o.ack(&format!("id{i}")).unwrap();
            }
        }
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert!(lines < 600, "{lines} lines: the log was not compacted");
        drop(o);
        let o = Outbox::open(&path, 100_000, FullPolicy::DropOldest).unwrap();
        assert_eq!(o.len(), 100);
    }
}
