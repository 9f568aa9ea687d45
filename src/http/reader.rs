//! A reader of streams over HTTP (`GET /poll`, `GET /sse`): who it is, what
//! it follows, from where, and the resume that starts it.
//!
//! The selection is the caller's user stream (the token's `sub`, or `?user=`
//! on an open server), the rooms of `?rooms=a,b`, and `broadcast`. The
//! reader is registered as a waiter before any history is read, so nothing
//! published meanwhile can slip between the read and the wait.

use std::collections::VecDeque;
use std::sync::Arc;

use hyper::header::{self, HeaderValue};
use hyper::{HeaderMap, Request, Response, StatusCode};
use serde_json::json;

use super::reply::{self, ResponseBody};
use crate::history::gate::{Admit, Gap, Gate, Resolved};
use crate::history::{CursorError, Record, Since};
use crate::limits::{
    MAX_ROOMS_PER_CONNECTION, invalid_room, user_id_fits, user_id_too_long, valid_room,
};
use crate::node::{Node, Registration};
use crate::outbox::Item;
use crate::query::query_param;
use crate::stream::Stream;

/// What a reader follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// The caller; `None` on an open server without `?user=`.
    pub user: Option<Arc<str>>,
    pub rooms: Vec<String>,
}

impl Selection {
    /// Checks the caller (as an upgrade would: origin, token, `?user=`) and
    /// reads `?rooms=`.
    pub fn of<B>(node: &Node, req: &Request<B>) -> Result<Selection, Response<ResponseBody>> {
        let named = query_param(req.uri(), "user");
        if named.as_ref().is_some_and(|u| !user_id_fits(u)) {
            return Err(reply::error(
                StatusCode::BAD_REQUEST,
                &user_id_too_long("user"),
            ));
        }
        let admission = node
            .auth()
            .admit(req.uri(), req.headers(), named.as_deref())
            .map_err(|refusal| reply::refusal(&refusal))?;
        let user = admission.user.or(named).map(Arc::from);
        let mut rooms: Vec<String> = Vec::new();
        for room in query_param(req.uri(), "rooms")
            .iter()
            .flat_map(|list| list.split(','))
            .filter(|room| !room.is_empty())
        {
            if !valid_room(room) {
                return Err(reply::error(StatusCode::BAD_REQUEST, &invalid_room()));
            }
            if !rooms.iter().any(|r| r == room) {
                rooms.push(room.to_owned());
            }
        }
        if rooms.len() > MAX_ROOMS_PER_CONNECTION {
            return Err(reply::error(
                StatusCode::BAD_REQUEST,
                &format!("at most {MAX_ROOMS_PER_CONNECTION} rooms may be followed at once"),
            ));
        }
        Ok(Selection { user, rooms })
    }

    /// The streams followed, in the order positions are listed.
    pub fn streams(&self) -> Vec<Stream> {
        let user = self.user.iter().map(|u| Stream::User(u.clone()));
        let rooms = self.rooms.iter().map(|r| Stream::Room(r.as_str().into()));
        user.chain(std::iter::once(Stream::Broadcast))
            .chain(rooms)
            .collect()
    }

    /// Parses a `since` value for this selection: 400 when malformed, 403
    /// when it names a stream the caller may not read. Positions of
    /// streams not selected (another room) are left out.
    pub fn since(&self, value: &str) -> Result<Since, Response<ResponseBody>> {
        let given = Since::parse(value).map_err(|err| bad_cursor(&err))?;
        let mut since = Since::default();
        let streams = self.streams();
        for (stream, position) in given.iter() {
            if let Stream::User(_) = stream
                && !streams.contains(stream)
            {
                return Err(reply::error(
                    StatusCode::FORBIDDEN,
                    "since names a stream you may not read",
                ));
            }
            if streams.contains(stream) {
                since.set(stream.clone(), position.clone());
            }
        }
        Ok(since)
    }
}

/// 400 for a malformed `since`.
pub fn bad_cursor(err: &CursorError) -> Response<ResponseBody> {
    reply::json(
        StatusCode::BAD_REQUEST,
        json!({ "error": format!("invalid since: {err}"), "code": "invalid_cursor" }),
    )
}

/// CORS for a browser on another origin: the request's `Origin`, if it was
/// allowed (checked by [`Selection::of`]), is echoed.
pub fn allow_origin(request: &HeaderMap, res: &mut Response<ResponseBody>) {
    if let Some(origin) = request.get(header::ORIGIN) {
        let headers = res.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
}

/// The answer to a CORS preflight of `/poll` or `/sse`.
pub fn preflight<B>(node: &Node, req: &Request<B>) -> Response<ResponseBody> {
    if !node.auth().origin_allowed(req.headers()) {
        return reply::error(StatusCode::FORBIDDEN, "origin not allowed");
    }
    let mut res = Response::new(reply::empty());
    *res.status_mut() = StatusCode::NO_CONTENT;
    let headers = res.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Authorization, Last-Event-ID"),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    allow_origin(req.headers(), &mut res);
    res
}

/// One HTTP reader: its registration, and the gate of its streams.
pub struct Reader {
    pub reg: Registration,
    pub gate: Gate,
    taken: VecDeque<Item>,
}

impl Reader {
    /// Registers the reader, then resumes each selected stream from
    /// `since`; returns it with each stream's resolution, in selection
    /// order, or the gap a held message showed.
    pub async fn start(
        node: &Node,
        selection: &Selection,
        since: &Since,
    ) -> (Reader, Result<Vec<(Stream, Resolved)>, Gap>) {
        let user = selection.user.clone().unwrap_or_else(|| Arc::from(""));
        let reg = node.connect_waiter(user, &selection.rooms);
        let mut reader = Reader {
            reg,
            gate: Gate::new(node.config().outbound_queue),
            taken: VecDeque::new(),
        };
        let streams = selection.streams();
        for stream in &streams {
            reader.gate.hold(stream.clone());
        }
        let mut budget = node.resume_budget();
        let mut reads = Vec::with_capacity(streams.len());
        for stream in streams {
            let position = since.get(&stream);
            let read = node.read(&stream, position, &mut budget).await.ok();
            reads.push((stream, read));
        }
        node.after_history_read().await;
        let resolved = reader.settle(node, since, reads);
        (reader, resolved)
    }

    fn settle(
        &mut self,
        node: &Node,
        since: &Since,
        reads: Vec<(Stream, Option<crate::history::Read>)>,
    ) -> Result<Vec<(Stream, Resolved)>, Gap> {
        // Whatever arrived while reading is held in the gate.
        self.take()?;
        let mut resolved = Vec::with_capacity(reads.len());
        for (stream, read) in reads {
            let position = since.get(&stream);
            let settled = self.gate.resolve(&stream, position, read)?;
            if position.is_some() {
                let (_, reason) = settled.outcome.wire();
                node.metrics().resumed(reason.map(|r| r.as_str()));
            }
            resolved.push((stream, settled));
        }
        Ok(resolved)
    }

    /// The live messages the outbox holds that pass the gate, in order.
    pub fn take(&mut self) -> Result<Vec<Arc<Record>>, Gap> {
        self.reg.outbox().drain_into(&mut self.taken);
        let mut passing = Vec::new();
        while let Some(item) = self.taken.pop_front() {
            // Frames (pings, rosters) are for WebSocket clients.
            let Item::Record(record) = item else {
                continue;
            };
            match self.gate.admit(&record) {
                Ok(Admit::Pass) => passing.push(record),
                Ok(Admit::Drop | Admit::Held) => {}
                Ok(Admit::Gap) | Err(_) => return Err(Gap),
            }
        }
        Ok(passing)
    }
}
