//! The session model: at most one active message session per scale set, with
//! message-queue tokens that expire. A plain data structure with time passed in
//! (the fake's clock, a `Duration` since it started).

use std::collections::HashMap;
use std::time::Duration;

/// One message session as the fake GitHub keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// UUID string.
    pub id: String,
    /// `ownerName` sent by the listener (its hostname).
    pub owner: String,
    /// Bearer token of the message queue.
    pub queue_token: String,
    /// When `queue_token` stops being accepted; `None`: never.
    pub token_expires: Option<Duration>,
    /// Time of the last activity by the owner (create, poll start or end, refresh).
    pub last_seen: Duration,
    /// Polls currently held open by the owner.
    pub open_polls: u32,
    /// How long it stays active after `last_seen` with no open poll; `None`
    /// means forever (another owner that never lets go).
    pub ttl: Option<Duration>,
}

impl Session {
    /// Whether GitHub still considers the session alive at `now`.
    pub fn is_active(&self, now: Duration) -> bool {
        match self.ttl {
            None => true,
            Some(ttl) => self.open_polls > 0 || now.saturating_sub(self.last_seen) < ttl,
        }
    }

    /// Whether the queue token is still accepted at `now`.
    pub fn token_valid(&self, now: Duration) -> bool {
        self.token_expires.is_none_or(|e| now < e)
    }
}

/// Why a session could not be created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConflict {
    /// Owner of the session that is still active.
    pub owner: String,
}

/// What a message-queue bearer token is worth at some time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenCheck {
    /// The current token of an active session.
    Valid {
        /// Scale set of the session.
        scale_set: i64,
        /// Its id.
        session_id: String,
    },
    /// The current token of an active session, past its lifetime: GitHub
    /// answers 401 and the clients refresh the session.
    Expired,
    /// Never issued, rotated away by a refresh, or its session is gone.
    Unknown,
}

/// The session book: at most one active session per scale set.
#[derive(Debug, Default)]
pub struct SessionBook {
    sessions: HashMap<i64, Session>,
    next: u64,
    token_ttl: Option<Duration>,
}

impl SessionBook {
    /// A book whose queue tokens live `token_ttl` from their issue (`None`:
    /// forever).
    pub fn with_token_ttl(token_ttl: Option<Duration>) -> Self {
        Self {
            token_ttl,
            ..Self::default()
        }
    }

    fn new_id(&mut self, prefix: u32) -> String {
        self.next += 1;
        format!("{prefix:08x}-0000-4000-8000-{:012x}", self.next)
    }

    fn new_token(&mut self, now: Duration) -> (String, Option<Duration>) {
        let token = format!("queue-token-{}", self.new_id(0x70ce_0000));
        (token, self.token_ttl.map(|ttl| now.saturating_add(ttl)))
    }

    /// Creates a session for `owner`, unless another session of the scale
    /// set is still active at `now`. `ttl` is the stale-session TTL.
    pub fn create(
        &mut self,
        scale_set: i64,
        owner: &str,
        ttl: Option<Duration>,
        now: Duration,
    ) -> Result<Session, SessionConflict> {
        if let Some(existing) = self.sessions.get(&scale_set)
            && existing.is_active(now)
        {
            return Err(SessionConflict {
                owner: existing.owner.clone(),
            });
        }
        let id = self.new_id(0x5e55_1014);
        let (queue_token, token_expires) = self.new_token(now);
        let session = Session {
            id,
            owner: owner.to_owned(),
            queue_token,
            token_expires,
            last_seen: now,
            open_polls: 0,
            ttl,
        };
        self.sessions.insert(scale_set, session.clone());
        Ok(session)
    }

    /// The session of a scale set with this id, if it is still active.
    pub fn get(&self, scale_set: i64, session_id: &str, now: Duration) -> Option<&Session> {
        self.sessions
            .get(&scale_set)
            .filter(|s| s.id == session_id && s.is_active(now))
    }

    /// What `queue_token` is worth at `now`.
    pub fn check_token(&self, queue_token: &str, now: Duration) -> TokenCheck {
        let Some((scale_set, session)) = self
            .sessions
            .iter()
            .find(|(_, s)| s.queue_token == queue_token)
        else {
            return TokenCheck::Unknown;
        };
        if !session.is_active(now) {
            TokenCheck::Unknown
        } else if !session.token_valid(now) {
            TokenCheck::Expired
        } else {
            TokenCheck::Valid {
                scale_set: *scale_set,
                session_id: session.id.clone(),
            }
        }
    }

    /// Records activity of the owner of a session; `poll` is +1 when a poll
    /// starts, -1 when it ends, 0 otherwise. The end of a poll is recorded
    /// even when the session expired meanwhile (its open-poll count must come
    /// down). False when the session is not there.
    pub fn touch(&mut self, scale_set: i64, session_id: &str, poll: i32, now: Duration) -> bool {
        let Some(session) = self
            .sessions
            .get_mut(&scale_set)
            .filter(|s| s.id == session_id)
        else {
            return false;
        };
        if poll >= 0 && !session.is_active(now) {
            return false;
        }
        session.last_seen = now;
        session.open_polls = session.open_polls.saturating_add_signed(poll);
        true
    }

    /// Issues a new queue token for an active session (refresh).
    pub fn refresh(&mut self, scale_set: i64, session_id: &str, now: Duration) -> Option<Session> {
        self.get(scale_set, session_id, now)?;
        let (token, expires) = self.new_token(now);
        let session = self.sessions.get_mut(&scale_set)?;
        session.queue_token = token;
        session.token_expires = expires;
        session.last_seen = now;
        Some(session.clone())
    }

    /// Deletes a session. True when it was active; an expired session with
    /// this id is dropped too, but answers false (GitHub rejects deleting it).
    pub fn delete(&mut self, scale_set: i64, session_id: &str, now: Duration) -> bool {
        match self.sessions.get(&scale_set) {
            Some(s) if s.id == session_id => {
                let active = s.is_active(now);
                self.sessions.remove(&scale_set);
                active
            }
            _ => false,
        }
    }

    /// Removes every session of a scale set.
    pub fn clear(&mut self, scale_set: i64) {
        self.sessions.remove(&scale_set);
    }

    /// The session a scale set has, active or not.
    pub fn current(&self, scale_set: i64) -> Option<&Session> {
        self.sessions.get(&scale_set)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn session_conflicts_while_stale_session_lives_then_expires() {
        let mut book = SessionBook::default();
        let first = book
            .create(7, "listener-a", Some(30 * S), Duration::ZERO)
            .unwrap();
        // Owner killed: no delete, no polls. A new listener within the TTL conflicts.
        let err = book
            .create(7, "listener-a", Some(30 * S), 29 * S)
            .unwrap_err();
        assert_eq!(err.owner, "listener-a");
        // After the TTL the slot is free again.
        let second = book.create(7, "listener-a", Some(30 * S), 31 * S).unwrap();
        assert_ne!(first.id, second.id);
        assert_ne!(first.queue_token, second.queue_token);
        // Another scale set is independent.
        assert!(book.create(8, "other", Some(30 * S), 31 * S).is_ok());
    }

    #[test]
    fn an_open_poll_keeps_a_session_alive_past_its_ttl() {
        let mut book = SessionBook::default();
        let s = book.create(1, "a", Some(10 * S), Duration::ZERO).unwrap();
        assert!(book.touch(1, &s.id, 1, 5 * S));
        assert!(
            book.create(1, "b", Some(10 * S), 100 * S).is_err(),
            "poll still open"
        );
        assert!(book.touch(1, &s.id, -1, 100 * S));
        assert!(
            book.create(1, "b", Some(10 * S), 109 * S).is_err(),
            "within TTL of the last poll"
        );
        assert!(book.create(1, "b", Some(10 * S), 111 * S).is_ok());
    }

    #[test]
    fn delete_frees_the_slot_and_permanent_sessions_never_expire() {
        let mut book = SessionBook::default();
        let s = book.create(1, "a", Some(10 * S), Duration::ZERO).unwrap();
        assert!(!book.delete(1, "not-the-id", S));
        assert!(book.delete(1, &s.id, S));
        assert!(!book.delete(1, &s.id, S), "already deleted");
        assert!(book.create(1, "b", None, S).is_ok());
        assert!(book.create(1, "c", Some(S), 100_000 * S).is_err());
    }

    #[test]
    fn deleting_an_expired_session_drops_it_but_is_refused() {
        let mut book = SessionBook::default();
        let s = book.create(1, "a", Some(10 * S), Duration::ZERO).unwrap();
        assert!(!book.delete(1, &s.id, 11 * S), "expired");
        assert!(book.current(1).is_none(), "dropped anyway");
    }

    #[test]
    fn refresh_rotates_the_token_of_an_active_session_only() {
        let mut book = SessionBook::default();
        let s = book.create(1, "a", Some(10 * S), Duration::ZERO).unwrap();
        let r = book.refresh(1, &s.id, S).unwrap();
        assert_ne!(r.queue_token, s.queue_token);
        assert_eq!(book.check_token(&s.queue_token, S), TokenCheck::Unknown);
        assert!(matches!(
            book.check_token(&r.queue_token, S),
            TokenCheck::Valid { scale_set: 1, .. }
        ));
        assert!(book.refresh(1, &s.id, 100 * S).is_none(), "expired");
    }

    #[test]
    fn queue_tokens_expire_and_a_refresh_issues_a_fresh_one() {
        let mut book = SessionBook::with_token_ttl(Some(50 * S));
        // A session kept alive by polls outlives its token.
        let s = book.create(1, "a", Some(10 * S), Duration::ZERO).unwrap();
        assert_eq!(s.token_expires, Some(50 * S));
        for t in (5..=60).step_by(5) {
            assert!(book.touch(1, &s.id, 0, t * S));
        }
        assert!(matches!(
            book.check_token(&s.queue_token, 49 * S),
            TokenCheck::Valid { .. }
        ));
        assert_eq!(
            book.check_token(&s.queue_token, 50 * S),
            TokenCheck::Expired
        );
        let r = book.refresh(1, &s.id, 60 * S).unwrap();
        assert_eq!(r.token_expires, Some(110 * S));
        assert!(matches!(
            book.check_token(&r.queue_token, 60 * S),
            TokenCheck::Valid { .. }
        ));
        // The token of a session that expired is unknown, not merely expired.
        assert_eq!(
            book.check_token(&r.queue_token, 200 * S),
            TokenCheck::Unknown
        );
    }

    #[test]
    fn the_end_of_a_poll_is_recorded_after_the_session_expired() {
        let mut book = SessionBook::default();
        let s = book.create(1, "a", Some(10 * S), Duration::ZERO).unwrap();
        assert!(book.touch(1, &s.id, 1, S));
        book.sessions.get_mut(&1).unwrap().ttl = Some(S);
        // Still active while the poll is open; the end brings the count down.
        assert!(book.touch(1, &s.id, -1, 100 * S));
        assert_eq!(book.current(1).unwrap().open_polls, 0);
        assert!(!book.touch(1, &s.id, 1, 200 * S), "expired: no new poll");
    }
}
