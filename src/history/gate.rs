//! One reader's positions (a WebSocket session, a long-poll, an SSE
//! stream), and the rule its live messages pass.
//!
//! While a stream's history is being read, its live messages are *held*;
//! once the read has answered, the stream goes live at the head the read
//! found, and every message must then be the next one: one already seen is
//! dropped (it came both from history and live), one that skips ahead or
//! carries another epoch is a gap, which the reader must not paper over.

use std::sync::Arc;

use super::{Outcome, Position, Read, Record, Since};
use crate::protocol::json::Reason;
use crate::stream::Stream;

/// What to do with one live message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    /// The next message of its stream: send it.
    Pass,
    /// Seen already, or of a stream not followed: drop it.
    Drop,
    /// Its stream is held: kept until the history read answers.
    Held,
    /// Not the next one: the reader has missed something.
    Gap,
}

#[derive(Debug, Clone)]
enum State {
    Held(Vec<Arc<Record>>),
    Live(Position),
}

/// The streams one reader follows, each held or live at a position.
#[derive(Debug, Clone, Default)]
pub struct Gate {
    follows: Vec<(Stream, State)>,
    /// Messages all held streams together may keep.
    capacity: usize,
}

/// Too many messages were held for one reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow;

impl Gate {
    /// A gate that holds at most `capacity` messages over all its streams.
    pub fn new(capacity: usize) -> Self {
        Gate {
            follows: Vec::new(),
            capacity,
        }
    }

    /// Starts holding `stream`'s live messages (or holds them again).
    pub fn hold(&mut self, stream: Stream) {
        match self.follows.iter_mut().find(|(s, _)| *s == stream) {
            Some((_, state)) => *state = State::Held(Vec::new()),
            None => self.follows.push((stream, State::Held(Vec::new()))),
        }
    }

    /// Makes `stream` live after `head`; returns the held messages that come
    /// after it, in order, or `Err` if one of them shows a gap.
    pub fn release(&mut self, stream: &Stream, head: Position) -> Result<Vec<Arc<Record>>, Gap> {
        let Some((_, state)) = self.follows.iter_mut().find(|(s, _)| s == stream) else {
            return Ok(Vec::new());
        };
        let held = match std::mem::replace(state, State::Live(head)) {
            State::Held(held) => held,
            State::Live(_) => Vec::new(),
        };
        let mut passing = Vec::with_capacity(held.len());
        for record in held {
            match self.admit(&record) {
                Ok(Admit::Pass) => passing.push(record),
                Ok(Admit::Gap) | Err(_) => return Err(Gap),
                Ok(Admit::Drop | Admit::Held) => {}
            }
        }
        Ok(passing)
    }

    /// Stops following `stream`.
    pub fn forget(&mut self, stream: &Stream) {
        self.follows.retain(|(s, _)| s != stream);
    }

    /// Whether `stream` is followed.
    pub fn follows(&self, stream: &Stream) -> bool {
        self.follows.iter().any(|(s, _)| s == stream)
    }

    /// The rule for one live message.
    pub fn admit(&mut self, record: &Arc<Record>) -> Result<Admit, Overflow> {
        let held_total: usize = self.held();
        let Some((_, state)) = self.follows.iter_mut().find(|(s, _)| *s == record.stream) else {
            return Ok(Admit::Drop);
        };
        match state {
            State::Held(held) => {
                if held_total >= self.capacity {
                    return Err(Overflow);
                }
                held.push(record.clone());
                Ok(Admit::Held)
            }
            State::Live(at) => {
                let next = &record.position;
                if at.epoch.is_empty() {
                    // No head was known (history unreadable, no position
                    // given): the first message sets it.
                    *at = next.clone();
                    Ok(Admit::Pass)
                } else if next.epoch != at.epoch {
                    Ok(Admit::Gap)
                } else if next.offset <= at.offset {
                    Ok(Admit::Drop)
                } else if next.offset == at.offset + 1 {
                    at.offset = next.offset;
                    Ok(Admit::Pass)
                } else {
                    Ok(Admit::Gap)
                }
            }
        }
    }

    fn held(&self) -> usize {
        self.follows
            .iter()
            .map(|(_, state)| match state {
                State::Held(held) => held.len(),
                State::Live(_) => 0,
            })
            .sum()
    }

    /// The live streams' positions, as a `since` value reads them.
    pub fn positions(&self) -> Since {
        let mut since = Since::default();
        for (stream, state) in &self.follows {
            if let State::Live(at) = state {
                since.set(stream.clone(), at.clone());
            }
        }
        since
    }
}

/// A stream's resume, settled: where it stands and what the reader gets
/// first, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub head: Position,
    pub outcome: Outcome,
    /// The replay (with [`Outcome::Recovered`]), then the held live
    /// messages that follow the head.
    pub records: Vec<Arc<Record>>,
}

impl Gate {
    /// Settles `stream` with its history `read` (`None`: history could not
    /// be read), given the reader's `since` position: the stream goes live
    /// at the head found, or, unread, at the reader's own position.
    pub fn resolve(
        &mut self,
        stream: &Stream,
        since: Option<&Position>,
        read: Option<Read>,
    ) -> Result<Resolved, Gap> {
        let (head, outcome, mut records) = match read {
            Some(read) => (read.head, read.outcome, read.records),
            None => match since {
                Some(since) => (
                    since.clone(),
                    Outcome::Lost(Reason::Unavailable),
                    Vec::new(),
                ),
                None => (Position::new("", 0), Outcome::Fresh, Vec::new()),
            },
        };
        if outcome != Outcome::Recovered {
            records.clear();
        }
        records.extend(self.release(stream, head.clone())?);
        Ok(Resolved {
            head,
            outcome,
            records,
        })
    }
}

/// A held message showed a gap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap;

#[cfg(test)]
mod tests {
    use super::*;

    fn record(stream: &Stream, epoch: &str, offset: u64) -> Arc<Record> {
        Arc::new(
            Record::new(
                stream.clone(),
                Position::new(epoch, offset),
                0,
                format!("m{offset}").into(),
            )
            .unwrap(),
        )
    }

    #[test]
    fn held_messages_merge_with_the_history_read_without_duplicates() {
        let s = Stream::User("u".into());
        let mut gate = Gate::new(8);
        gate.hold(s.clone());
        for offset in [4, 5, 6] {
            assert_eq!(gate.admit(&record(&s, "e", offset)), Ok(Admit::Held));
        }
        // The read replayed up to 5: only 6 is still to come.
        let passing = gate.release(&s, Position::new("e", 5)).unwrap();
        let offsets: Vec<u64> = passing.iter().map(|r| r.position.offset).collect();
        assert_eq!(offsets, [6]);
        assert_eq!(gate.admit(&record(&s, "e", 6)), Ok(Admit::Drop));
        assert_eq!(gate.admit(&record(&s, "e", 7)), Ok(Admit::Pass));
        assert_eq!(gate.admit(&record(&s, "e", 9)), Ok(Admit::Gap));
        assert_eq!(gate.admit(&record(&s, "x", 8)), Ok(Admit::Gap));
        assert_eq!(gate.positions().to_string(), "user:u~e~7");
    }

    #[test]
    fn a_gap_among_held_messages_and_an_overflow_are_told() {
        let s = Stream::Broadcast;
        let mut gate = Gate::new(2);
        gate.hold(s.clone());
        gate.admit(&record(&s, "e", 8)).unwrap();
        assert_eq!(gate.release(&s, Position::new("e", 5)), Err(Gap));
        gate.hold(s.clone());
        gate.admit(&record(&s, "e", 1)).unwrap();
        gate.admit(&record(&s, "e", 2)).unwrap();
        assert_eq!(gate.admit(&record(&s, "e", 3)), Err(Overflow));
        let other = Stream::User("v".into());
        assert_eq!(gate.admit(&record(&other, "e", 1)), Ok(Admit::Drop));
    }
}
