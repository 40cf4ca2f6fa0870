//! One client connection: the CONNECT handshake, then a reader (this task) and a writer task.
//!
//! 1. Read CONNECT within `connect_timeout`; anything else first closes the connection
//!    [MQTT-3.1.0-1].
//! 2. Check the client id and the credentials; refuse with the right CONNACK code.
//! 3. Hand the session to the router, which queues CONNACK on this connection's link.
//! 4. Reader: bytes → packets, PINGREQ answered here, the rest batched to the router; keep
//!    alive enforced at 1.5 times the client's value [MQTT-3.1.2-24].
//! 5. Writer: packets from the router → bytes, many packets per write.
//!
//! A protocol violation closes only this connection (MQTT 5: after a DISCONNECT with the
//! reason code the specification names) and is logged with its spec clause.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use bytestring::ByteString;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, warn};

use super::acl::Acl;
use super::alias::{InboundAliases, OutboundAliases};
use super::auth::PasswordFile;
use super::codec::{
    self, ConnAck, Connect, DecodeError, Disconnect, Packet, Properties, Property, ProtocolVersion,
    Publish, reason,
};
use super::config::BrokerConfig;
use super::internal::INTERNAL_ID_PREFIX;
use super::link::{
    ClientLink, CloseCause, ConnId, ConnectOutcome, ConnectRequest, Direct, RouterMsg,
};
use super::router::SharedRouter;
use super::stats::BrokerStats;
use super::transport::{ConnRead, ConnWrite};

mod writer;

use writer::{OutLimits, write_loop};

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 8 * 1024;
/// Read reservation while waiting for CONNECT (which is small); later reads use
/// [`READ_CHUNK`].
const CONNECT_CHUNK: usize = 512;

/// What every connection needs, shared.
#[derive(Debug)]
pub struct ConnectionContext {
    /// Broker settings.
    pub cfg: Arc<BrokerConfig>,
    /// Counters.
    pub stats: Arc<BrokerStats>,
    /// The router: a connection routes what it reads in its own task.
    pub router: Arc<SharedRouter>,
    /// Users, when a password file is configured.
    pub users: Option<Arc<PasswordFile>>,
    /// The ACL, when configured: a will must be on a topic the client may publish to.
    pub acl: Option<Arc<Acl>>,
    /// Broker shutdown.
    pub shutdown: CancellationToken,
    /// Tracks writer tasks for shutdown.
    pub tracker: TaskTracker,
}

/// Why the handshake did not produce a session.
#[derive(Debug, thiserror::Error)]
enum HandshakeError {
    #[error("no CONNECT within {0:?} [MQTT-3.1.4 / connect_timeout]")]
    Timeout(Duration),
    #[error("connection closed before CONNECT")]
    Eof,
    #[error("first packet was {0}, not CONNECT [MQTT-3.1.0-1]")]
    NotConnect(&'static str),
    #[error("invalid CONNECT: {0}")]
    Decode(#[from] DecodeError),
    #[error("network error: {0}")]
    Io(#[from] io::Error),
    #[error("broker is shutting down")]
    Shutdown,
}

/// The user name a TLS client certificate gives, on listeners that use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertUser {
    /// The listener does not take user names from certificates.
    NotUsed,
    /// The certificate's Common Name: it replaces the CONNECT user name, and the password is
    /// not checked (the certificate was).
    Name(ByteString),
    /// The listener takes user names from certificates but this one has no Common Name: the
    /// client is refused as not authorized.
    Missing,
}

/// A client that completed CONNECT and passed the checks.
struct Admitted<R, W> {
    rd: R,
    wr: W,
    buf: BytesMut,
    connect: Box<Connect>,
    client_id: ByteString,
    assigned_id: bool,
}

/// Serves one accepted connection, over any transport, until it ends.
pub async fn serve<R: ConnRead, W: ConnWrite>(
    rd: R,
    wr: W,
    peer: SocketAddr,
    conn: ConnId,
    ctx: Arc<ConnectionContext>,
    cert_user: CertUser,
) {
    let span = tracing::info_span!("conn", %peer, client_id = tracing::field::Empty);
    async move {
        // Boxed: its state lives only until CONNECT is read, not for the connection's life.
        let Some(admitted) = Box::pin(handshake(rd, wr, cert_user, &ctx)).await else {
            return;
        };
        let Admitted {
            rd,
            wr,
            buf,
            connect,
            client_id,
            assigned_id,
        } = admitted;
        let version = connect.protocol;
        tracing::Span::current().record("client_id", client_id.as_ref() as &str);
        let closing = CancellationToken::new();
        let v5 = version == ProtocolVersion::V5;
        let alias_max = if v5 {
            connect.properties.topic_alias_maximum().unwrap_or(0)
        } else {
            0
        };
        let out = OutLimits {
            max_packet: (connect.properties.maximum_packet_size())
                .map_or(usize::MAX, |m| m as usize),
            aliases: OutboundAliases::new(alias_max),
        };
        // Topic Aliases are state of the writer's: a client that takes them is not written
        // to directly. (Maximum Packet Size the router checks before a message gets here.)
        let direct = (alias_max == 0)
            .then(|| wr.direct())
            .flatten()
            .map(|socket| Direct { socket, version });
        let (link, receiver) = ClientLink::with_direct(direct);
        ctx.tracker.spawn(
            write_loop(
                wr,
                receiver,
                version,
                out,
                ctx.stats.clone(),
                closing.clone(),
            )
            .instrument(tracing::Span::current()),
        );
        let (accepted, outcome) = oneshot::channel();
        let keep_alive = match ctx.cfg.server_keep_alive {
            Some(server) if v5 => server,
            _ => connect.keep_alive,
        };
        let zero_expiry = connect.properties.session_expiry_interval().unwrap_or(0) == 0;
        let request = ConnectRequest {
            conn,
            peer,
            username: connect.username.clone(),
            connect,
            client_id,
            assigned_id,
            link: link.clone(),
            accepted,
            internal: false,
        };
        if ctx.router.send(RouterMsg::Connect(request)).is_err() {
            return;
        }
        if outcome.await != Ok(ConnectOutcome::Accepted) {
            return;
        }
        let mut reader = Reader {
            conn,
            version,
            link,
            aliases: InboundAliases::new(if v5 { ctx.cfg.topic_alias_maximum } else { 0 }),
            zero_expiry,
            ctx: ctx.clone(),
            closing,
        };
        let cause = reader.run(rd, buf, keep_alive).await;
        // The router may be gone at shutdown; then there is nobody left to tell.
        let _router_gone = ctx.router.send(RouterMsg::Closed { conn, cause });
    }
    .instrument(span)
    .await;
}

/// Reads CONNECT and admits the client, or refuses it (CONNACK with the reason) and closes.
async fn handshake<R: ConnRead, W: ConnWrite>(
    mut rd: R,
    mut wr: W,
    cert_user: CertUser,
    ctx: &ConnectionContext,
) -> Option<Admitted<R, W>> {
    let mut buf = BytesMut::new();
    let mut level = None;
    let mut connect = match read_connect(&mut rd, &mut buf, &mut level, ctx).await {
        Ok(connect) => connect,
        Err(error) => {
            log_handshake_error(&error, &ctx.stats);
            match error {
                HandshakeError::Decode(DecodeError::UnsupportedProtocolVersion(_)) => {
                    // [MQTT-3.1.2-2]: CONNACK 0x01 then close (written in 3.1.1 form).
                    let code = reason::UNSUPPORTED_PROTOCOL_VERSION;
                    refuse(&mut wr, ProtocolVersion::V311, code).await;
                }
                // MQTT 5 (§3.1.4): a CONNECT that fails may get a CONNACK with the reason.
                HandshakeError::Decode(e) if level == Some(5) => {
                    refuse(&mut wr, ProtocolVersion::V5, e.reason_code()).await;
                }
                _ => {}
            }
            return None;
        }
    };
    let certified = match cert_user {
        CertUser::NotUsed => false,
        CertUser::Name(name) => {
            connect.username = Some(name);
            connect.password = None;
            true
        }
        CertUser::Missing => {
            info!("Client certificate without a Common Name refused.");
            refuse(&mut wr, connect.protocol, reason::NOT_AUTHORIZED).await;
            return None;
        }
    };
    match admit(&connect, certified, ctx).await {
        Ok((client_id, assigned_id)) => Some(Admitted {
            rd,
            wr,
            buf,
            connect,
            client_id,
            assigned_id,
        }),
        Err(code) => {
            refuse(&mut wr, connect.protocol, code).await;
            None
        }
    }
}

fn log_handshake_error(error: &HandshakeError, stats: &BrokerStats) {
    match error {
        HandshakeError::Eof | HandshakeError::Shutdown => debug!(%error, "Connection closed."),
        HandshakeError::Io(_) | HandshakeError::Timeout(_) => {
            info!(%error, "Connection closed during handshake.");
        }
        HandshakeError::Decode(_) | HandshakeError::NotConnect(_) => {
            BrokerStats::add(&stats.protocol_errors, 1);
            warn!(%error, "Protocol violation; connection closed.");
        }
    }
}

/// The protocol level of a CONNECT at the front of `buf`, once readable.
fn connect_level(buf: &[u8]) -> Option<u8> {
    let header = 1 + buf.iter().skip(1).take(4).position(|b| b & 0x80 == 0)? + 1;
    match buf.get(header..header + 7)? {
        [0, 4, b'M', b'Q', b'T', b'T', level] => Some(*level),
        _ => None,
    }
}

async fn read_connect<R: ConnRead>(
    rd: &mut R,
    buf: &mut BytesMut,
    level: &mut Option<u8>,
    ctx: &ConnectionContext,
) -> Result<Box<Connect>, HandshakeError> {
    let deadline = Instant::now() + ctx.cfg.connect_timeout;
    loop {
        *level = connect_level(buf);
        // CONNECT is parsed by its own protocol level; the version given here is unused.
        if let Some(packet) = codec::decode(buf, ProtocolVersion::V311, ctx.cfg.max_packet_size)? {
            return match packet {
                // The session keeps these strings for its whole life: copy them out of the
                // read buffer so they do not pin it.
                Packet::Connect(connect) => Ok(Box::new(connect.detached())),
                other => Err(HandshakeError::NotConnect(other.name())),
            };
        }
        tokio::select! {
            () = ctx.shutdown.cancelled() => return Err(HandshakeError::Shutdown),
            () = tokio::time::sleep_until(deadline) => {
                return Err(HandshakeError::Timeout(ctx.cfg.connect_timeout));
            }
            read = read_some(rd, buf, CONNECT_CHUNK, &ctx.stats) => {
                if read? == 0 {
                    return Err(HandshakeError::Eof);
                }
            }
        }
    }
}

/// Reads what the transport has into `buf`; 0 at EOF. Over TCP the buffer is reserved only
/// once data is there, so an idle connection holds no read buffer.
async fn read_some<R: ConnRead>(
    rd: &mut R,
    buf: &mut BytesMut,
    chunk: usize,
    stats: &BrokerStats,
) -> io::Result<usize> {
    let n = rd.read_some(buf, chunk).await?;
    BrokerStats::add(&stats.bytes_received, n as u64);
    Ok(n)
}

/// Checks the client identifier and the credentials. Returns the client id in effect and
/// whether the broker assigned it, or the CONNACK reason code that refuses the client.
/// `certified`: the user name comes from a verified client certificate, so no password is
/// checked.
async fn admit(
    connect: &Connect,
    certified: bool,
    ctx: &ConnectionContext,
) -> Result<(ByteString, bool), u8> {
    if connect
        .properties
        .find(|p| match p {
            codec::Property::AuthenticationMethod(m) => Some(m.clone()),
            _ => None,
        })
        .is_some()
    {
        info!("CONNECT asks for enhanced authentication, which is not supported.");
        return Err(reason::BAD_AUTHENTICATION_METHOD);
    }
    if let Some(will) = &connect.will {
        if will.qos as u8 > ctx.cfg.maximum_qos {
            info!(
                will_qos = will.qos as u8,
                "Will QoS above the Maximum QoS refused."
            );
            return Err(reason::QOS_NOT_SUPPORTED);
        }
        if will.retain && !ctx.cfg.retain_available {
            info!("Retained will refused: retain is not available.");
            return Err(reason::RETAIN_NOT_SUPPORTED);
        }
    }
    if connect.client_id.starts_with(INTERNAL_ID_PREFIX) {
        // In-process sessions (the bridge) must not be taken over from the network.
        info!(client_id = %connect.client_id, "Reserved client id refused.");
        return Err(reason::CLIENT_IDENTIFIER_NOT_VALID);
    }
    let (client_id, assigned) = if connect.client_id.is_empty() {
        if connect.protocol == ProtocolVersion::V311 && !connect.clean_start {
            // [MQTT-3.1.3-8]: a zero-length id needs CleanSession=1 in 3.1.1.
            info!("Empty client id with a persistent session refused.");
            return Err(reason::CLIENT_IDENTIFIER_NOT_VALID);
        }
        (
            ByteString::from(format!("auto-{:016x}", rand::random::<u64>())),
            true,
        )
    } else {
        (connect.client_id.clone(), false)
    };
    let admitted = match (&connect.username, &ctx.users) {
        (None, _) if !ctx.cfg.allow_anonymous => {
            info!(%client_id, "Anonymous client refused.");
            Err(reason::NOT_AUTHORIZED)
        }
        (Some(_), _) if certified => Ok((client_id, assigned)),
        (Some(user), Some(users)) => {
            let users = users.clone();
            let name = user.to_string();
            let password = connect.password.clone().unwrap_or_default();
            // Argon2 takes milliseconds of CPU: keep it off the async workers.
            let ok = tokio::task::spawn_blocking(move || users.verify(&name, &password))
                .await
                .unwrap_or(false);
            if ok {
                Ok((client_id, assigned))
            } else {
                info!(%client_id, user = %user, "Bad user name or password.");
                Err(reason::BAD_USER_NAME_OR_PASSWORD)
            }
        }
        _ => Ok((client_id, assigned)),
    };
    if let (Ok((client_id, _)), Some(will), Some(acl)) = (&admitted, &connect.will, &ctx.acl) {
        // As Mosquitto: a will the client could not publish itself refuses the connection.
        if !acl.may_publish(connect.username.as_deref(), client_id, &will.topic) {
            info!(%client_id, topic = %will.topic, "Will topic not allowed by the ACL.");
            return Err(reason::NOT_AUTHORIZED);
        }
    }
    admitted
}

/// Sends a refusing CONNACK and closes.
async fn refuse<W: ConnWrite>(wr: &mut W, version: ProtocolVersion, code: u8) {
    let mut out = BytesMut::new();
    let ack = ConnAck {
        session_present: false,
        code,
        properties: Properties::new(),
    };
    codec::encode(&Packet::ConnAck(ack), version, &mut out);
    // The client may already be gone; there is nothing more to do either way.
    let _ignored = wr.send_all(&out).await;
    let _ignored = wr.close().await;
}

struct Reader {
    conn: ConnId,
    version: ProtocolVersion,
    link: ClientLink,
    /// MQTT 5 Topic Aliases the client set up.
    aliases: InboundAliases,
    /// CONNECT had Session Expiry Interval 0, which DISCONNECT may not raise [MQTT-3.14.2-2].
    zero_expiry: bool,
    ctx: Arc<ConnectionContext>,
    /// Cancelled by the writer when it closes the connection (takeover, shutdown).
    closing: CancellationToken,
}

impl Reader {
    async fn run<R: ConnRead>(
        &mut self,
        mut rd: R,
        mut buf: BytesMut,
        keep_alive: u16,
    ) -> CloseCause {
        // [MQTT-3.1.2-24]: one and a half times the Keep Alive without a packet closes.
        let limit = (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500));
        let idle = tokio::time::sleep(limit.unwrap_or(Duration::MAX / 4));
        tokio::pin!(idle);
        // When the last packet arrived: the timer is moved only when it fires, not on every
        // read (a timer-wheel update per read otherwise).
        let mut last_read = Instant::now();
        // One waiter for the whole connection, not one registered and removed per read.
        let closing = self.closing.clone().cancelled_owned();
        tokio::pin!(closing);
        let mut batch = Vec::new();
        loop {
            let cause = self.drain(&mut buf, &mut batch);
            if !batch.is_empty() {
                let packets = std::mem::take(&mut batch);
                let msg = RouterMsg::Packets {
                    conn: self.conn,
                    packets,
                };
                if self.ctx.router.send(msg).is_err() {
                    return CloseCause::Abnormal;
                }
                // Routing is work done for other tasks (the subscribers' writers): it counts
                // against this task's budget, so a flooding publisher yields to them as often
                // as when routing was a channel hand-over.
                tokio::task::consume_budget().await;
            }
            if let Some(cause) = cause {
                return cause;
            }
            if self.closing.is_cancelled() {
                return self.last_words(&mut rd, &mut buf);
            }
            if buf.is_empty() {
                buf = BytesMut::new();
            }
            // Reading comes first: a DISCONNECT already in the socket when the connection is
            // taken over must still be seen, so that its will is not published.
            tokio::select! {
                biased;
                read = read_some(&mut rd, &mut buf, READ_CHUNK, &self.ctx.stats) => match read {
                    Ok(0) => {
                        debug!("Client closed the connection without DISCONNECT.");
                        return CloseCause::Abnormal;
                    }
                    Ok(_) => {
                        if limit.is_some() {
                            last_read = Instant::now();
                        }
                    }
                    Err(error) => {
                        debug!(%error, "Read failed.");
                        return CloseCause::Abnormal;
                    }
                },
                () = &mut closing => return self.last_words(&mut rd, &mut buf),
                // Keep Alive 0: no timer to poll on every read.
                () = &mut idle, if limit.is_some() => {
                    if let Some(due) = limit.map(|l| last_read + l).filter(|&d| d > Instant::now()) {
                        idle.as_mut().reset(due);
                        continue;
                    }
                    info!(keep_alive, "Keep-alive timeout; closing.");
                    self.link.disconnect(reason::KEEP_ALIVE_TIMEOUT);
                    return CloseCause::KeepAliveTimeout;
                }
            }
        }
    }

    /// The connection is being closed (taken over, shutting down): one last look at what the
    /// socket already holds, so that a DISCONNECT sent just before is honoured (no will).
    fn last_words<R: ConnRead>(&mut self, rd: &mut R, buf: &mut BytesMut) -> CloseCause {
        // Whatever the outcome, the connection ends; only a DISCONNECT changes the cause.
        rd.read_ready(buf);
        let mut ignored = Vec::new();
        match self.drain(buf, &mut ignored) {
            Some(cause @ CloseCause::Disconnect { .. }) => cause,
            _ => CloseCause::Abnormal,
        }
    }

    /// Decodes every complete packet in `buf`; packets for the router go to `batch`. Returns
    /// the close cause when the connection must end.
    fn drain(&mut self, buf: &mut BytesMut, batch: &mut Vec<Packet>) -> Option<CloseCause> {
        loop {
            let packet = match codec::decode(buf, self.version, self.ctx.cfg.max_packet_size) {
                Ok(Some(packet)) => packet,
                Ok(None) => return None,
                Err(error) => return Some(self.violation(&error.to_string(), error.reason_code())),
            };
            match packet {
                Packet::Publish(mut p) => {
                    if self.version == ProtocolVersion::V5 {
                        if let Err((what, code)) = self.check_publish(&mut p) {
                            return Some(self.violation(what, code));
                        }
                    }
                    batch.push(Packet::Publish(p));
                }
                Packet::Subscribe(s)
                    if !self.ctx.cfg.subscription_identifiers
                        && s.properties.subscription_identifier().is_some() =>
                {
                    return Some(self.violation(
                        "Subscription Identifier while CONNACK said they are not available \
                         [5.0 §3.2.2.3.12]",
                        reason::PROTOCOL_ERROR,
                    ));
                }
                Packet::PubAck(_)
                | Packet::PubRec(_)
                | Packet::PubRel(_)
                | Packet::PubComp(_)
                | Packet::Subscribe(_)
                | Packet::Unsubscribe(_) => batch.push(packet),
                Packet::PingReq => {
                    self.link.send(Packet::PingResp);
                }
                Packet::Disconnect(d) => return Some(self.client_disconnect(&d)),
                Packet::Connect(_) => {
                    return Some(self.violation(
                        "second CONNECT on one connection [MQTT-3.1.0-2]",
                        reason::PROTOCOL_ERROR,
                    ));
                }
                Packet::Auth(_) => {
                    return Some(self.violation(
                        "AUTH without enhanced authentication [MQTT-4.12.0-1]",
                        reason::PROTOCOL_ERROR,
                    ));
                }
                Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                    return Some(self.violation(
                        &format!("{} is a server-to-client packet", packet.name()),
                        reason::PROTOCOL_ERROR,
                    ));
                }
            }
        }
    }

    /// MQTT 5 PUBLISH rules that depend on what CONNACK announced, and the Topic Alias.
    fn check_publish(&mut self, p: &mut Publish) -> Result<(), (&'static str, u8)> {
        let cfg = &self.ctx.cfg;
        if p.qos as u8 > cfg.maximum_qos {
            return Err((
                "PUBLISH QoS above the Maximum QoS [MQTT-3.2.2-11]",
                reason::QOS_NOT_SUPPORTED,
            ));
        }
        if p.retain && !cfg.retain_available {
            return Err((
                "retained PUBLISH while Retain Available is 0 [MQTT-3.2.2-14]",
                reason::RETAIN_NOT_SUPPORTED,
            ));
        }
        let sub_id = |q: &Property| matches!(q, Property::SubscriptionIdentifier(_));
        if p.properties.0.iter().any(sub_id) {
            return Err((
                "Subscription Identifier in a client PUBLISH [MQTT-3.3.4-6]",
                reason::PROTOCOL_ERROR,
            ));
        }
        self.aliases.resolve(p).map_err(|e| (e.why, e.reason))
    }

    fn client_disconnect(&self, d: &Disconnect) -> CloseCause {
        let text = d.properties.find(|p| match p {
            Property::ReasonString(s) => Some(s.clone()),
            _ => None,
        });
        debug!(
            reason = d.reason,
            reason_string = text.as_deref(),
            "Client sent DISCONNECT."
        );
        let new_expiry = d.properties.session_expiry_interval();
        if self.zero_expiry && new_expiry.is_some_and(|e| e != 0) {
            return self.violation(
                "DISCONNECT sets a Session Expiry Interval after CONNECT had 0 [MQTT-3.14.2-2]",
                reason::PROTOCOL_ERROR,
            );
        }
        let publish_will = d.reason == reason::DISCONNECT_WITH_WILL;
        self.link.mark_disconnect(publish_will);
        CloseCause::Disconnect {
            publish_will,
            session_expiry: d.properties.session_expiry_interval(),
        }
    }

    fn violation(&self, what: &str, code: u8) -> CloseCause {
        BrokerStats::add(&self.ctx.stats.protocol_errors, 1);
        warn!(
            error = what,
            reason_code = code,
            "Protocol violation; connection closed."
        );
        self.link.disconnect_because(code, what);
        CloseCause::Abnormal
    }
}
