//! A session's JSON dialect: its messages, and the streams it follows.
//!
//! With history on, a JSON connection follows its user's stream,
//! `broadcast` and every room it is in. Following one or more streams (at
//! the opening, on `room.join`) is a resume: each stream is held in the
//! gate (its live messages wait), its history after the client's position
//! is read, then the client gets the stream's `stream.position` (with
//! `recovered` and `reason` when it gave a position), the messages it
//! missed if they could all be had, and only then, in order and without
//! duplicates, the live messages that waited.

use super::{Ending, Session};
use crate::history::{CursorError, Position, Since};
use crate::limits::MAX_ROOMS_PER_CONNECTION;
use crate::protocol::Close;
use crate::protocol::json::{ClientMessage, ErrorCode, ProtocolError, ServerMessage, now_ms};
use crate::stream::Stream;

impl Session<'_> {
    /// Starts a JSON connection: with history on, follows the user's
    /// stream, `broadcast` and `room` from `since`.
    pub(super) async fn open(
        &mut self,
        room: Option<&str>,
        since: Option<String>,
    ) -> Result<(), Ending> {
        if !self.node.history_enabled() {
            return Ok(());
        }
        let mut given = match since.as_deref().map(Since::parse).transpose() {
            Ok(given) => given.unwrap_or_default(),
            Err(err) => {
                self.refuse(bad_cursor(&err));
                Since::default()
            }
        };
        let mut streams = vec![Stream::User(self.reg.user().clone()), Stream::Broadcast];
        streams.extend(room.map(|room| Stream::Room(room.into())));
        let mut wanted = Vec::with_capacity(streams.len());
        for stream in streams {
            let since = given.remove(&stream);
            wanted.push((stream, since));
        }
        // What is left names other users' streams, or rooms to join later.
        for (stream, position) in given.iter() {
            match stream {
                Stream::Room(_) => self.saved.set(stream.clone(), position.clone()),
                _ => self.refuse(forbidden(stream)),
            }
        }
        self.follow(wanted).await
    }

    /// Follows `streams`, each from its position (see the module's doc).
    async fn follow(&mut self, streams: Vec<(Stream, Option<Position>)>) -> Result<(), Ending> {
        for (stream, _) in &streams {
            self.gate.hold(stream.clone());
        }
        let mut budget = self.node.resume_budget();
        let mut reads = Vec::with_capacity(streams.len());
        for (stream, since) in streams {
            let read = self
                .node
                .read(&stream, since.as_ref(), &mut budget)
                .await
                .ok();
            reads.push((stream, since, read));
        }
        self.node.after_history_read().await;
        // Live messages that came meanwhile: held, or (other streams)
        // passed on, after whatever was queued before them.
        self.take_outbox()?;
        for (stream, since, read) in reads {
            let resolved = self
                .gate
                .resolve(&stream, since.as_ref(), read)
                .map_err(|_| Ending::Close(Close::InsufficientState))?;
            let (recovered, reason) = resolved.outcome.wire();
            if since.is_some() {
                self.node.metrics().resumed(reason.map(|r| r.as_str()));
            }
            let position = ServerMessage::Position {
                stream: stream.to_string(),
                epoch: resolved.head.epoch.to_string(),
                offset: resolved.head.offset,
                recovered,
                reason,
            };
            self.pending.push_back(position.frame());
            self.pending
                .extend(resolved.records.iter().map(|r| r.frame.clone()));
        }
        Ok(())
    }

    /// Acts on one message of the JSON dialect; `Some` ends the session. A
    /// bad message is answered with `system.error` and spends the error
    /// budget.
    pub(super) async fn on_message(&mut self, text: &str) -> Option<Ending> {
        self.node.metrics().message_received();
        let decoded = ClientMessage::decode(text, self.node.config().max_text_length);
        let refused = match decoded {
            Err(err) => err,
            Ok(message) => match self.act(message).await {
                Ok(()) => return None,
                Err(Ok(err)) => err,
                Err(Err(ending)) => return Some(ending),
            },
        };
        self.refuse(refused);
        (!self.errors.spend()).then_some(Ending::Close(Close::Abuse))
    }

    /// Answers a refused message with its `system.error`.
    fn refuse(&mut self, refused: ProtocolError) {
        tracing::debug!(
            conn = self.reg.id(),
            code = refused.code.as_str(),
            "refused a message"
        );
        self.node.metrics().protocol_error();
        self.reg.outbox().push(refused.to_message().frame());
    }

    /// Carries out one valid client message; `Err(Ok)` refuses it,
    /// `Err(Err)` ends the session.
    async fn act(&mut self, message: ClientMessage) -> Result<(), Result<ProtocolError, Ending>> {
        match message {
            ClientMessage::ChatMessage { room, text } => {
                if !self.reg.is_in(&room) {
                    return Err(Ok(not_in(&room)));
                }
                let user = self.reg.user().clone();
                if self.node.say(&room, &user, &text, None).await.is_err() {
                    return Err(Ok(ProtocolError::new(
                        ErrorCode::Unavailable,
                        "history unavailable (Redis unreachable): nothing was sent; send it again later",
                    )));
                }
            }
            ClientMessage::RoomJoin { room, since } => self.join(room, since).await?,
            ClientMessage::RoomLeave { room } => {
                if !self.reg.leave(&room) {
                    return Err(Ok(not_in(&room)));
                }
                self.gate.forget(&Stream::Room(room.as_str().into()));
                self.reg.outbox().push(ServerMessage::Left { room }.frame());
            }
            ClientMessage::Ping { ts } => {
                let ts = ts.unwrap_or_else(now_ms);
                self.reg.outbox().push(ServerMessage::Pong { ts }.frame());
            }
            ClientMessage::Pong { .. } => {}
        }
        Ok(())
    }

    /// `room.join`: the roster is queued (before any message of the room),
    /// then, with history on, the room's stream is followed from `since` or
    /// from the position saved for it. Joining again only re-sends the
    /// roster.
    async fn join(
        &mut self,
        room: String,
        since: Option<String>,
    ) -> Result<(), Result<ProtocolError, Ending>> {
        let stream = Stream::Room(room.as_str().into());
        let position = match since.as_deref().map(Since::parse).transpose() {
            Err(err) => return Err(Ok(bad_cursor(&err))),
            Ok(None) => None,
            Ok(Some(mut given)) => {
                let position = given.remove(&stream);
                if let Some(other) = given.streams().next() {
                    return Err(Ok(ProtocolError::new(
                        ErrorCode::InvalidCursor,
                        format!("the since of room.join {room:?} names {other}, not {stream}"),
                    )));
                }
                position
            }
        };
        let joining = !self.reg.is_in(&room);
        if joining && self.reg.rooms().len() >= MAX_ROOMS_PER_CONNECTION {
            return Err(Ok(ProtocolError::new(
                ErrorCode::TooManyRooms,
                format!("a connection may be in at most {MAX_ROOMS_PER_CONNECTION} rooms"),
            )));
        }
        self.node.join(&mut self.reg, &room).await;
        if joining && self.node.history_enabled() {
            let position = position.or_else(|| self.saved.remove(&stream));
            self.follow(vec![(stream, position)]).await.map_err(Err)?;
        }
        Ok(())
    }
}

fn not_in(room: &str) -> ProtocolError {
    ProtocolError::new(
        ErrorCode::NotInRoom,
        format!("not in room {room:?}: send room.join first"),
    )
}

fn bad_cursor(err: &CursorError) -> ProtocolError {
    ProtocolError::new(ErrorCode::InvalidCursor, format!("invalid since: {err}"))
}

fn forbidden(stream: &Stream) -> ProtocolError {
    ProtocolError::new(
        ErrorCode::ForbiddenStream,
        format!("since names {stream}, which this connection may not read; ignored"),
    )
}
