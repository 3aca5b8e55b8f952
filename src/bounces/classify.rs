//! Why a delivery failed: one decision over plain data (the diagnostic text, the RFC 3463 status,
//! the SMTP reply code, the DSN action), driven by the tables below. Precedence (first that
//! answers wins):
//!
//! 1. the DSN action: `delivered`, `relayed`, `expanded` → delivered;
//! 2. the reporting MTA's own category ([`CATEGORIES`]: PowerMTA) or a provider's own error code
//!    in the reply ([`GODADDY_CODES`], [`COX_CODES`], [`ORANGE_CODES`]): their verdicts;
//! 3. a *decisive* status code ([`STATUS`] rows marked so: 5.1.1, 5.1.2, 5.1.6, 5.2.2, …), whose
//!    meaning only the words of [`OVERRIDE_DECISIVE`] reasons change (a full mailbox answered
//!    with 5.1.1);
//! 4. the diagnostic text against [`PHRASES`] (case-insensitive; table order is precedence, so
//!    narrow reasons such as spam or a full mailbox come before broad ones such as rejected);
//! 5. any other status code in [`STATUS`] (the subject and detail, `X.y.z`, for any class);
//! 6. broad words in [`LATE_PHRASES`] ("rejected", "giving up"), then the reply code in [`REPLY`];
//! 7. `delayed` → expired; words that name no reason → onhold; no words → undefined.
//!
//! Then three adjustments (none after a decisive status): the SMTP command the reply answered,
//! named in the diagnostic or the text around it ([`COMMAND_RULES`]: "user unknown" after DATA
//! is a filter), "user unknown" under a mailbox or policy status ([`FILTER_SUBJECTS`]) not
//! answering RCPT TO is a filter too, and an unknown host on a temporary (4xx) failure is a
//! network error.

use std::sync::LazyLock;

use regex::{RegexSet, RegexSetBuilder};

use super::report::Reason;

/// What is known about one recipient's failure.
#[derive(Debug, Clone, Copy, Default)]
pub struct Facts<'a> {
    pub diagnostic: &'a str,
    pub status: Option<&'a str>,
    pub reply_code: Option<u16>,
    pub action: Option<&'a str>,
    /// Text around the failure (a session transcript) where the SMTP command may be named.
    pub context: &'a str,
    /// The reporting MTA's own category for the failure (PowerMTA's
    /// `X-PowerMTA-BounceCategory`), if it gave one.
    pub category: Option<&'a str>,
    /// The diagnostic names the returned message's sender and not the recipient: the refusal
    /// is about the sender.
    pub about_sender: bool,
    /// The host that wrote the report (a DSN's `Reporting-MTA`), lower case.
    pub reporting_mta: Option<&'a str>,
}

/// Reporting hosts whose refusals are a receiving rule's answer, not a mailbox lookup: Amazon
/// SES receiving (`inbound-smtp.<region>.amazonaws.com`) keeps no mailboxes; it bounces with the
/// reply its receipt rule's Bounce action is set to (the console's first template is "550 5.1.1
/// Mailbox does not exist"). Its "unknown user" is a filter's.
pub const RULE_REPORTERS: &[&str] = &[r"^inbound-smtp\.[a-z0-9-]+\.amazonaws\.com$"];

static RULE_REPORTER: LazyLock<Option<RegexSet>> = LazyLock::new(|| {
    RegexSetBuilder::new(RULE_REPORTERS)
        .case_insensitive(true)
        .build()
        .ok()
});

/// Words that say the connecting host itself is refused: a block whatever command the refusal
/// answered (an ISP blocking outbound port 25 answers MAIL FROM).
pub const HOST_BLOCK_WORDS: &[&str] = &[
    r"my name was rejected",
    r"refused to talk to me",
    // Outbound port 25 blocking: the sender must relay through its own provider.
    r"use the smtp server of your isp",
];

static HOST_BLOCK: LazyLock<Option<RegexSet>> = LazyLock::new(|| {
    RegexSetBuilder::new(HOST_BLOCK_WORDS)
        .case_insensitive(true)
        .build()
        .ok()
});

/// Phrases per reason, matched case-insensitively against the diagnostic (regular expressions).
/// How MTAs and mailbox providers word each failure; the order of rows is the precedence.
pub const PHRASES: &[(Reason, &[&str])] = &[
    (
        Reason::VirusDetected,
        &[
            r"virus",
            r"malware",
            r"infected",
            r"message contains (an )?(executable|unacceptable attachment)",
        ],
    ),
    (
        Reason::ExceedLimit,
        &[
            r"message exceeds .*limit for this recipient",
            r"limit set by (the )?recipient",
            r"exceeds (the )?recipient'?s? (size )?limit",
        ],
    ),
    (
        Reason::MesgTooBig,
        &[
            r"message (size|length) exceeds",
            r"message (is )?too (big|large)",
            r"exceeds? (the )?(maximum|size limit|message size)",
            r"size limit",
            r"mail size limit",
            r"message size \d+ exceeds",
            r"too large",
            r"message too long",
        ],
    ),
    (
        Reason::NotCompliantRfc,
        &[
            r"not rfc ?(5322|2822|822|5321|2821)",
            r"rfc ?(5322|2822|822|5321|2821) complian",
            r"not (rfc|standard)[ -]?complian",
            r"duplicate (headers?|fields?)",
            r"multiple (from|to|subject|date|message-id) (headers?|fields?)",
            r"multiple .{0,20}addresses in",
            r"there are multiple",
            r"message (is )?not (rfc|standard)",
            r"header (is )?(malformed|invalid|missing)",
            r"malformed (header|message)",
            r"missing (required )?header",
            r"bare (lf|line ?feed|cr)",
        ],
    ),
    // "UBE": unsolicited bulk e-mail, as content filters (amavisd-new, Barracuda) name spam in
    // "Message content rejected, UBE": spam, not a content error.
    (Reason::SpamDetected, &[r"\bube\b"]),
    (
        Reason::ContentError,
        &[r"(message )?content (was |is )?(rejected|refused)"],
    ),
    (
        Reason::SystemFull,
        &[
            r"insufficient (disk )?(space|storage)",
            r"system (is )?full",
            r"insufficient system storage",
            r"mail system full",
            r"disk full",
            r"requested mail action aborted: exceeded storage",
        ],
    ),
    (
        Reason::MailboxFull,
        &[
            r"mailbox (is )?(full|over ?quota|exceeded|size limit)",
            r"over ?quota",
            r"quota (exceeded|exceed|full|violation)",
            r"exceeded (storage|(the )?quota|storage allocation)",
            r"storage (allocation|quota) exceeded",
            r"(user|mailbox|account|recipient)('s)? (mailbox )?(is )?(full|has exceeded)",
            r"mailbox exceeds allowed size",
            r"not enough (storage|space)",
            r"mail ?box full",
            r"disk quota",
            r"would exceed (the )?(maximum|limit)",
            r"mailfolder is full",
            r"account is full",
            r"no space left",
            r"out of (disk )?space",
            r"inbox is full",
            r"recipient.{0,20}(over|exceeded).{0,10}(quota|limit)",
            r"too many messages in",
        ],
    ),
    (
        Reason::HasMoved,
        &[
            r"has moved",
            r"address (has )?changed",
            r"moved to",
            r"no longer (at|with) this",
        ],
    ),
    (
        Reason::NotAccept,
        &[
            r"does not accept mail",
            r"null mx",
            r"accepts no mail",
            r"not accept any mail",
            r"no mail (is )?accepted",
            r"couldn't find a mail exchanger",
            r"doesn't receive e?mail",
            r"does not receive e?mail",
        ],
    ),
    (Reason::Blocked, HOST_BLOCK_WORDS),
    // Google Groups refusing a post (the group may not exist or the sender may not post to
    // it; the text is in the sender's language, the help link is not), and Gmail refusing a
    // "Send mail as" address (its help topic CustomFromDenied): the sender is refused.
    (
        Reason::Rejected,
        &[
            r"groups\.google\.com/support",
            r"may not have permission to post",
            r"customfromdenied",
        ],
    ),
    (
        Reason::Rejected,
        &[
            r"sender was rejected",
            r"sender address rejected",
            // An address (not the connecting host) on a block list: the sender is refused.
            r"address (that )?(has been|is) (black|block) ?listed",
        ],
    ),
    (
        Reason::Suspend,
        &[
            r"(account|mailbox|user|address|recipient)( has been| is)? (temporarily )?(disabled|suspended|deactivated|inactive|locked|frozen|expired|closed)",
            r"suspended",
            r"(inactive|disabled|deactivated) (account|mailbox|user|recipient)",
            r"account (is )?not active",
            r"not (an )?active (account|mailbox|user)",
            r"has been disabled",
            r"tried to reach is (inactive|disabled)",
            r"(recipient|user) account is (blocked|disabled|locked)",
            r"account that you tried to reach is disabled",
            r"currently suspended",
        ],
    ),
    (
        Reason::SpamDetected,
        &[
            r"\bspam\b",
            r"junk mail",
            r"bulk mail",
            r"unsolicited",
            r"message (was |has been )?(rejected|blocked) (due to|by|because of) (content|policy|filter)",
            r"(detected|classified|identified) as (spam|junk|bulk)",
            r"scored too high",
            r"considered (as )?(spam|unsolicited)",
            r"rejected by content scanner",
            r"low reputation",
        ],
    ),
    (
        Reason::BadReputation,
        &[
            r"reputation",
            r"poor sender",
            r"unusual (rate|volume|amount)",
            r"temporarily deferred due to",
            r"unexpected volume",
            r"user complaints",
        ],
    ),
    // au (KDDI, ezweb.ne.jp) answers "550 : User unknown", with no address, when the
    // recipient's filter refuses the sender; "550 <address>: User unknown" is an unknown user.
    (Reason::Filtered, &[r"\b5\d\d:? ?: user unknown"]),
    (
        Reason::UserUnknown,
        &[
            r"user (is )?unknown",
            r"unknown (user|recipient|local.?part|mailbox|address|e-?mail)",
            r"no such (user|recipient|mailbox|account|address|local user|person|e-?mail)",
            r"(user|recipient|mailbox|address|account|e-?mail( address)?) (name )?(does not|doesn't|did not|does no longer) exist",
            r"(user|recipient|mailbox|address|account|addressee)( was| is)? (not found|not known|unknown|invalid|not valid)",
            r"invalid (recipient|mailbox|user|address|e-?mail)",
            r"not a valid (recipient|mailbox|user|address)",
            r"(recipient|user|address|mailbox|account) (is )?not (listed|valid|recognized|recognised|exist)",
            r"recipient rejected",
            r"rejected: user",
            r"user not found",
            r"unrouteable address",
            r"unroutable address",
            r"mailbox not found",
            r"mailbox (is )?(currently )?unavailable",
            r"address couldn't be found",
            r"invalid (final delivery )?userid",
            r"no mailbox",
            r"does not have an account",
            r"no account",
            r"doesn't have a .* account",
            r"not our customer",
            r"unknown or illegal alias",
            r"bad destination mailbox",
            r"mailbox .* does not exist",
            r"user doesn't have",
            r"is not a known user",
            r"this user doesn't have",
            r"account (does not|doesn't) exist",
            r"no valid recipients",
            r"no such address",
            r"address (is )?(invalid|not valid|unknown)",
            r"not listed in (the )?(domino )?directory",
            r"unknown address",
            r"recipient not found",
            r"recipient does not exist",
            r"user invalid",
            r"destination addresses were unknown",
            r"the email account that you tried to reach does not exist",
            r"said: 550[ -](5\.1\.1|.*no such)",
            r"not (have|has) a mailbox",
            r"no such user",
            r"unknown user",
            r"account .* not exist",
            r"isn't in (my|our) (list of allowed rcpthosts|control/locals)",
            r"does not like recipient",
            r"550 5\.1\.1",
            r"mailbox name not allowed",
            r"addressee unknown",
            r"recipient address rejected: (user|access denied|undeliverable|unknown)",
            r"this address no longer accepts mail",
            r"not a registered user",
            r"the recipient's mailbox is unavailable",
        ],
    ),
    (
        Reason::NetworkError,
        &[
            r"host not found, try again",
            // Postfix: the MX lookup was answered with garbage (a DNS failure, not a verdict).
            r"malformed or unexpected name server reply",
            r"network error",
        ],
    ),
    (
        Reason::HostUnknown,
        &[
            r"host (or domain name )?not found",
            r"unknown host",
            r"host unknown",
            r"domain (name )?(not found|does not exist|unknown|not exist)",
            r"no such domain",
            r"unrouteable mail domain",
            r"name or service not known",
            r"nxdomain",
            r"domain (is )?not (valid|in use)",
            r"no mx (record|host)",
            r"unknown domain",
            r"dns (lookup|resolution) fail",
            r"invalid domain",
            r"recipient domain .* (not|no).* (exist|found)",
            r"host not found",
            r"hostname (is )?not found",
            r"couldn't find any host",
            r"domain .*has no (valid )?(mx|mail)",
            r"mx .*(not found|does not exist)",
        ],
    ),
    (
        Reason::RequirePtr,
        &[
            r"ptr",
            r"reverse (dns|lookup|address|hostname)",
            r"rdns",
            r"(client|host) (name|address) (lookup )?failed",
            r"cannot find your hostname",
            r"no (reverse|ptr)",
            r"(hostname|host name) (does not|doesn't|did not) (match|resolve)",
            r"cannot resolve your address",
            r"name lookup failed",
            r"mismatches client ip",
            r"unresolvable (address|host)",
            r"without valid reverse",
            r"not resolv",
        ],
    ),
    (
        Reason::AuthFailure,
        &[
            r"spf",
            r"dkim",
            r"dmarc",
            r"sender policy framework",
            r"authentication (failed|failure|check failed|results)",
            r"not authorized to send",
            r"sender (is )?not authorized",
            r"fails? (the )?(sender )?authentication",
            r"authentication checks? failed",
            r"authentication information",
        ],
    ),
    (
        Reason::SecurityError,
        &[
            r"tls (is )?required",
            r"starttls",
            r"requires? (a )?(secure|encrypted|tls)",
            r"must issue a starttls",
            r"authentication required",
            r"(smtp )?auth(entication)? (is )?required",
            r"certificate",
            r"encryption required",
            r"insecure",
            r"user not authenticated",
            r"unauthenticated",
            r"smtp authentication",
            r"not permitted to relay without",
            r"submission requires",
        ],
    ),
    (
        Reason::NoRelaying,
        &[
            r"relay(ing)? (access )?(denied|not permitted|not allowed|prohibited)",
            r"not permitted to relay",
            r"not configured to relay",
            r"unable to relay",
            r"we do not relay",
            r"relay not permitted",
            r"no relaying",
            r"not (allowed|authorized) to relay",
            r"cannot relay",
            r"relaying (mail )?to .* (is )?not allowed",
            r"open relay",
        ],
    ),
    (
        Reason::TooManyConn,
        &[
            r"too many (concurrent |simultaneous )?(connections|sessions|open)",
            r"connection rate limit",
            r"connection (limit|count) (exceeded|reached)",
            r"too many hosts",
            // Too many recipients in one transaction (Postfix's "452/552 Too many
            // recipients", GoDaddy's IB605): the session's limits, not a sending rate.
            r"too many recipients",
            r"max(imum)? (number of )?connections",
        ],
    ),
    (
        Reason::Speeding,
        &[
            r"rate limit",
            r"rate.?limited",
            r"sending (too fast|too many messages|rate)",
            r"too many (messages|emails|mails)",
            r"throttl",
            r"try again later.*(volume|rate)",
            r"receiving mail at a rate",
            r"exceeded .* rate",
        ],
    ),
    (
        Reason::Expired,
        &[
            r"retry time(out)? (not reached|exceeded)",
            r"retry timeout",
            r"delivery time expired",
            r"could not be delivered (for|within|after)",
            r"message (has been )?expired",
            r"message timed out",
            r"unable to deliver .* (for|within) \d",
            r"has not been delivered .* (for|within|after)",
            r"was not delivered .* (within|after)",
            r"(connection|connect) (timed out|timeout)",
            r"timed? ?out",
            r"did not accept our requests to connect",
            r"failing for a long time",
            r"delivery failed \d+ attempts",
            r"message expired",
            r"undeliverable for",
            r"retry timeout exceeded",
            r"envelope expired",
            r"still undelivered after",
        ],
    ),
    (
        Reason::NetworkError,
        &[
            r"mail loop",
            r"loop(s)? (detected|back)",
            r"too many hops",
            r"hop count",
            r"routing loop",
            r"mail for .* loops back",
            r"network (is )?unreachable",
            r"no route to host",
            r"connection (refused|reset|lost|closed|dropped)",
            r"lost connection",
            r"could not connect",
            r"unable to connect",
            r"host (is )?(unreachable|down)",
            r"dns (error|failure|problem)",
            r"temporary (dns|lookup) failure",
        ],
    ),
    (
        Reason::Blocked,
        &[
            r"blacklist",
            r"blocklist",
            r"block ?list",
            r"black ?list",
            r"listed (at|on|in|by)",
            r"spamhaus",
            r"spamcop",
            r"sorbs",
            r"barracudacentral",
            r"\brbl\b",
            r"\bdnsbl\b",
            r"ip (address )?(is )?(blocked|banned|rejected|listed|not allowed|blacklisted)",
            r"your (ip|host|server|network)",
            r"(client|connecting|sending) (ip|host|server|address)",
            r"(access|connection) (denied|refused|rejected|not allowed)",
            r"has been blocked",
            r"blocked (by|due|because|for|using)",
            r"\bblocked\b",
            r"banned",
            r"refused to talk",
            r"not accepting (mail|connections) from",
            r"dynamic (ip|address|pool)",
            r"residential",
            r"dial-?up",
            r"\bpolicy\b.*\b(ip|host|client)\b",
            r"service (not available|unavailable)",
            r"rejected due to .*(ip|network)",
            r"temporarily rejected",
            r"go away",
            r"drop",
        ],
    ),
    (
        Reason::PolicyViolation,
        &[
            r"policy",
            r"not allowed",
            r"not permitted",
            r"violat",
            r"prohibited",
        ],
    ),
    (
        Reason::Rejected,
        &[
            r"sender (address )?(rejected|refused|denied|blocked|not allowed|unknown|invalid|domain)",
            r"(from|sender|envelope sender|mail from) address",
            r"domain of sender",
            r"sender verify failed",
            r"sender address rejected",
            r"your (e-?mail )?address",
            r"mail from",
            r"envelope from",
            r"sender is",
            r"return.?path",
            r"rejected (the )?(message|mail)",
            r"(mail|message) (was |has been )?(rejected|refused|denied)",
            r"administrative prohibition",
            r"prohibited",
        ],
    ),
    (
        Reason::Filtered,
        &[
            r"filter",
            r"refused by (the )?recipient",
            r"recipient (has )?(refused|rejected|blocked)",
            r"does not accept",
            r"doesn't accept",
            r"not accept(ing)? mail",
            r"only accepts mail from",
            r"(recipient|user) (is )?restricted",
            r"restricted",
            r"(sender|you) (is )?not (allowed|authorized|permitted) to (send|post|email)",
            r"is not a member",
            r"must be a member",
            r"not authorized to email",
            r"user refuses",
        ],
    ),
    (
        Reason::ContentError,
        &[
            r"content",
            r"attachment",
            r"encoding",
            r"charset",
            r"8-?bit",
            r"line (is )?too long",
        ],
    ),
    (
        Reason::SyntaxError,
        &[
            r"syntax error",
            r"parameter not implemented",
            r"command (unrecognized|not recognized|not implemented)",
            r"unrecognized command",
            r"bad sequence",
            r"syntax",
        ],
    ),
    (
        Reason::SystemError,
        &[
            r"system error",
            r"internal (server )?error",
            r"server error",
            r"local error",
            r"temporary (local )?(failure|problem|error)",
            r"try again later",
            r"i/o error",
            r"out of memory",
            r"resources temporarily unavailable",
            r"too many (errors|bad commands)",
            r"unexpected",
            r"error in processing",
            r"configuration error",
            r"misconfigured",
            r"service (is )?(currently )?unavailable",
        ],
    ),
    (
        Reason::MailerError,
        &[
            r"mailer error",
            r"command died",
            r"exit code",
            r"exited with",
            r"pipe to .* failed",
            r"procmail",
            r"unknown mailer",
            r"mail delivery (agent )?failed",
            r"local delivery failed",
            r"x-unix;",
            r"program (exited|failed)",
        ],
    ),
    (Reason::OnHold, &[r"on ?hold"]),
];

/// Phrases too broad to outweigh a status code: read after [`STATUS`] (see the module docs).
pub const LATE_PHRASES: &[(Reason, &[&str])] = &[
    (
        Reason::Rejected,
        &[r"rejected", r"refused", r"denied", r"not accepted"],
    ),
    (
        Reason::Expired,
        &[
            r"giving up",
            r"gave up",
            r"too long in (the )?queue",
            r"(queue|queued) too long",
            r"deferred",
            r"expired",
            r"delivery (has )?(been )?delayed",
            r"not going to try again",
        ],
    ),
];

/// RFC 3463 status codes and what they mean. `decisive`: no wording overrides it.
/// `class` `x` means any class (2, 4 or 5).
pub const STATUS: &[(&str, Reason, bool)] = &[
    ("x.1.1", Reason::UserUnknown, true),
    ("x.1.2", Reason::HostUnknown, true),
    ("x.1.3", Reason::UserUnknown, false),
    ("x.1.4", Reason::UserUnknown, false),
    ("x.1.5", Reason::UserUnknown, false),
    ("x.1.6", Reason::HasMoved, true),
    ("x.1.7", Reason::Rejected, false),
    ("x.1.8", Reason::Rejected, false),
    ("x.1.9", Reason::NoRelaying, false),
    ("x.1.10", Reason::UserUnknown, true),
    ("x.2.1", Reason::Suspend, false),
    ("x.2.2", Reason::MailboxFull, true),
    ("x.2.3", Reason::MesgTooBig, false),
    ("x.2.4", Reason::MailerError, false),
    ("x.3.1", Reason::SystemFull, false),
    ("x.3.2", Reason::NotAccept, false),
    ("x.3.3", Reason::SystemError, false),
    ("x.3.4", Reason::MesgTooBig, true),
    ("x.3.5", Reason::SystemError, false),
    ("x.4.1", Reason::NetworkError, false),
    ("x.4.2", Reason::NetworkError, false),
    ("x.4.3", Reason::SystemError, false),
    ("x.4.4", Reason::HostUnknown, false),
    ("x.4.5", Reason::SystemError, false),
    ("x.4.6", Reason::NetworkError, false),
    ("x.4.7", Reason::Expired, false),
    ("x.5.0", Reason::SyntaxError, false),
    ("x.5.1", Reason::SyntaxError, false),
    ("x.5.2", Reason::SyntaxError, false),
    ("x.5.3", Reason::TooManyConn, false),
    ("x.5.4", Reason::SyntaxError, false),
    ("x.5.5", Reason::SyntaxError, false),
    ("x.6.0", Reason::ContentError, false),
    ("x.6.1", Reason::ContentError, false),
    ("x.6.2", Reason::ContentError, false),
    ("x.6.3", Reason::ContentError, false),
    ("x.6.4", Reason::ContentError, false),
    ("x.6.5", Reason::ContentError, false),
    ("x.7.0", Reason::SecurityError, false),
    ("x.7.1", Reason::Rejected, false),
    ("x.7.2", Reason::SecurityError, false),
    ("x.7.3", Reason::SecurityError, false),
    ("x.7.4", Reason::SecurityError, false),
    ("x.7.5", Reason::SecurityError, false),
    ("x.7.6", Reason::SecurityError, false),
    ("x.7.7", Reason::SecurityError, false),
    ("x.7.8", Reason::SecurityError, false),
    ("x.7.9", Reason::SecurityError, false),
    ("x.7.10", Reason::SecurityError, false),
    ("x.7.11", Reason::SecurityError, false),
    ("x.7.12", Reason::SecurityError, false),
    ("x.7.13", Reason::Suspend, false),
    ("x.7.14", Reason::Suspend, false),
    ("x.7.15", Reason::SecurityError, false),
    ("x.7.16", Reason::MesgTooBig, false),
    ("x.7.17", Reason::UserUnknown, false),
    ("x.7.18", Reason::UserUnknown, false),
    ("x.7.19", Reason::UserUnknown, false),
    ("x.7.20", Reason::AuthFailure, false),
    ("x.7.21", Reason::AuthFailure, false),
    ("x.7.22", Reason::AuthFailure, false),
    ("x.7.23", Reason::AuthFailure, false),
    ("x.7.24", Reason::AuthFailure, false),
    ("x.7.25", Reason::RequirePtr, false),
    ("x.7.26", Reason::AuthFailure, false),
    ("x.7.27", Reason::NotAccept, false),
    ("x.7.28", Reason::SpamDetected, false),
    ("x.7.29", Reason::AuthFailure, false),
    ("x.7.30", Reason::SecurityError, false),
];

/// Reasons whose words outweigh even a decisive status: servers answer a full mailbox, a
/// refused relay, a moved or a mail-less address with `5.1.1` too (qmail's "mailbox is over
/// quota (#5.1.1)"), and the words are the more precise (as Sisimai reads a `5.1.1`).
pub const OVERRIDE_DECISIVE: &[Reason] = &[
    Reason::MailboxFull,
    Reason::NoRelaying,
    Reason::HasMoved,
    Reason::NotAccept,
];

/// Status subjects (`x.2.x` mailbox status, `x.7.x` security or policy) under which "user
/// unknown" not answering RCPT TO is a filter's refusal: the address was accepted, or the
/// status says the mailbox exists but refuses (RFC 3463 `x.2.1`: mailbox disabled, not
/// accepting messages).
pub const FILTER_SUBJECTS: &[&str] = &["2", "7"];

/// PowerMTA's bounce categories (`X-PowerMTA-BounceCategory` in its DSNs, documented in its
/// user's guide) that name a reason; `other` and unknown ones leave it to the words and codes.
pub const CATEGORIES: &[(&str, Reason)] = &[
    ("bad-mailbox", Reason::UserUnknown),
    ("bad-domain", Reason::HostUnknown),
    ("inactive-mailbox", Reason::Suspend),
    ("quota-issues", Reason::MailboxFull),
    ("message-expired", Reason::Expired),
    ("no-answer-from-host", Reason::NetworkError),
    ("routing-errors", Reason::NetworkError),
    ("bad-connection", Reason::NetworkError),
    ("relaying-issues", Reason::NoRelaying),
    ("spam-related", Reason::SpamDetected),
    ("virus-related", Reason::VirusDetected),
    ("content-related", Reason::ContentError),
    ("policy-related", Reason::PolicyViolation),
    ("protocol-errors", Reason::SyntaxError),
];

fn category_reason(category: &str) -> Option<Reason> {
    let category = category.trim();
    CATEGORIES
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(category))
        .map(|(_, reason)| *reason)
}

/// Mailbox providers' own error codes, written in their replies, with what their postmaster
/// pages say each means. A code is the provider's own verdict, more precise than any status or
/// wording around it (GoDaddy answers "550 5.1.1 … too many recipients this hour. IB607").
///
/// GoDaddy (secureserver.net, "what does my email bounceback mean"): `IBnnn`.
pub const GODADDY_CODES: &[(&str, Reason)] = &[
    ("IB007", Reason::TooManyConn),
    ("IB101", Reason::Speeding),
    ("IB103", Reason::BadReputation),
    ("IB104", Reason::Blocked),
    ("IB105", Reason::Blocked),
    ("IB106", Reason::Blocked),
    ("IB108", Reason::RequirePtr),
    ("IB110", Reason::Blocked),
    ("IB111", Reason::Blocked),
    ("IB112", Reason::Blocked),
    ("IB113", Reason::Blocked),
    ("IB212", Reason::SpamDetected),
    ("IB401", Reason::SecurityError),
    ("IB501", Reason::NotCompliantRfc),
    ("IB502", Reason::NotCompliantRfc),
    ("IB504", Reason::Speeding),
    ("IB506", Reason::Rejected),
    ("IB508", Reason::AuthFailure),
    ("IB510", Reason::Speeding),
    ("IB605", Reason::TooManyConn),
    ("IB607", Reason::Speeding),
    ("IB705", Reason::VirusDetected),
];

/// Orange and La Poste (`LPN007_416`, `OFR005_505`, `OFR_506`, `OUK_513`: the last three
/// digits are the error). "Service refused, please try later" codes name no reason
/// ([`Reason::Undefined`]).
pub const ORANGE_CODES: &[(&str, Reason)] = &[
    ("102", Reason::Blocked),
    ("103", Reason::Blocked),
    ("104", Reason::TooManyConn),
    ("105", Reason::Undefined),
    ("108", Reason::Undefined),
    ("109", Reason::Undefined),
    ("201", Reason::Undefined),
    ("305", Reason::SecurityError),
    ("401", Reason::Blocked),
    ("402", Reason::SecurityError),
    ("403", Reason::Rejected),
    ("405", Reason::Rejected),
    ("415", Reason::Rejected),
    ("416", Reason::UserUnknown),
    ("417", Reason::MailboxFull),
    ("418", Reason::UserUnknown),
    ("420", Reason::Suspend),
    ("421", Reason::Rejected),
    ("423", Reason::Undefined),
    ("424", Reason::Undefined),
    ("426", Reason::Suspend),
    ("505", Reason::SystemError),
    ("506", Reason::SpamDetected),
    ("510", Reason::Blocked),
    ("513", Reason::Undefined),
    ("514", Reason::MesgTooBig),
    ("999", Reason::Blocked),
];

/// Cox (cox.net, "email error codes"): `AUP#CODE`.
pub const COX_CODES: &[(&str, Reason)] = &[
    ("CXBL", Reason::Blocked),
    ("CDRBL", Reason::Blocked),
    ("CXDNS", Reason::RequirePtr),
    ("CXSNDR", Reason::AuthFailure),
    ("CXSMTP", Reason::Rejected),
    ("CXCNCT", Reason::TooManyConn),
    ("CXMXRT", Reason::TooManyConn),
    ("CXTHRT", Reason::SecurityError),
    ("CXMJ", Reason::SecurityError),
    ("URLBL011", Reason::SpamDetected),
    ("URLBL101", Reason::SpamDetected),
    ("URLBL110", Reason::SpamDetected),
    ("URLBL1001", Reason::SpamDetected),
];

static COX: LazyLock<Option<regex::Regex>> =
    LazyLock::new(|| regex::Regex::new(r"AUP#([0-9A-Z]+)").ok());
static GODADDY: LazyLock<Option<regex::Regex>> =
    LazyLock::new(|| regex::Regex::new(r"\b(IB\d{3})\b").ok());
static ORANGE: LazyLock<Option<regex::Regex>> =
    LazyLock::new(|| regex::Regex::new(r"(?i)\b(?:LPN|OFR|OUK)(?:\d{3})?[-_](\d{3})\b").ok());

/// The reason a provider's own error code in `text` names, if any.
pub fn provider_code(text: &str) -> Option<Reason> {
    let lookup = |re: &Option<regex::Regex>, table: &[(&str, Reason)]| {
        let code = re.as_ref()?.captures(text)?.get(1)?.as_str().to_owned();
        table
            .iter()
            .find(|(c, _)| c.eq_ignore_ascii_case(&code))
            .map(|(_, r)| *r)
    };
    // Cox's IP block-list codes (IPBL0001 … IPBL1111: which lists name the sending IP).
    let cox_ip_listed = COX
        .as_ref()
        .and_then(|re| re.captures(text))
        .and_then(|c| c.get(1))
        .is_some_and(|c| c.as_str().starts_with("IPBL"));
    if cox_ip_listed {
        return Some(Reason::Blocked);
    }
    lookup(&COX, COX_CODES)
        .or_else(|| lookup(&GODADDY, GODADDY_CODES))
        .or_else(|| lookup(&ORANGE, ORANGE_CODES))
}

/// SMTP reply codes that say something by themselves.
pub const REPLY: &[(u16, Reason)] = &[
    (421, Reason::SystemError),
    (450, Reason::SystemError),
    (451, Reason::SystemError),
    (452, Reason::MailboxFull),
    (521, Reason::NotAccept),
    (522, Reason::MailboxFull),
    (552, Reason::MailboxFull),
    (554, Reason::Rejected),
    (556, Reason::NotAccept),
];

/// The SMTP command a failure answered, as bounce texts name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Connect,
    Mail,
    Rcpt,
    Data,
}

/// How bounce texts name the command a reply answered (lower case); the last one named wins.
pub const COMMANDS: &[(&str, Command)] = &[
    ("after initial connection", Command::Connect),
    ("refused to talk to me", Command::Connect),
    ("my name was rejected", Command::Connect),
    ("in reply to helo", Command::Connect),
    ("in reply to ehlo", Command::Connect),
    ("after helo", Command::Connect),
    ("after ehlo", Command::Connect),
    ("in reply to mail from", Command::Mail),
    ("after mail from", Command::Mail),
    (">>> mail from", Command::Mail),
    ("in reply to rcpt to", Command::Rcpt),
    ("after rcpt to", Command::Rcpt),
    (">>> rcpt to", Command::Rcpt),
    ("did not like our rcpt to", Command::Rcpt),
    ("[rcpt_to]", Command::Rcpt),
    ("[mail_from]", Command::Mail),
    ("[data]", Command::Data),
    ("in reply to end of data", Command::Data),
    ("in reply to data", Command::Data),
    ("after end of data", Command::Data),
    ("after data", Command::Data),
    (">>> data", Command::Data),
    ("smtp command data", Command::Data),
];

/// A reason the command it answered changes: "user unknown" in reply to the message's content
/// is a filter's words (the recipient was accepted before); a block at MAIL FROM is about the
/// sender; a refusal before any command is about the connecting host.
pub const COMMAND_RULES: &[(Command, Reason, Reason)] = &[
    (Command::Data, Reason::UserUnknown, Reason::Filtered),
    (Command::Mail, Reason::Blocked, Reason::Rejected),
    (Command::Connect, Reason::Rejected, Reason::Blocked),
    (Command::Connect, Reason::Undefined, Reason::Blocked),
];

/// How mail systems word their own directory's answer that an address has no mailbox (Lotus
/// Notes' Name & Address Book, IMail's delivery userid, Exchange 2003's "recipient name is not
/// recognized" and its `000C05A6` code, a carrier's "no valid recipients"): an unknown user even
/// where no status, reply or command says so.
pub const DIRECTORY_WORDS: &[&str] = &[
    r"not listed in (the )?public name & address book",
    r"invalid final delivery userid",
    r"recipient name is not recognized",
    r"\(000c05a6\)",
    r"no valid recipients",
    // Yahoo accepts RCPT TO and answers an unknown account at DATA: "554 delivery error: dd
    // This user doesn't have a yahoo.com account".
    r"delivery error: dd this user doesn't have a",
];

static DIRECTORY: LazyLock<Option<RegexSet>> = LazyLock::new(|| {
    RegexSetBuilder::new(DIRECTORY_WORDS)
        .case_insensitive(true)
        .build()
        .ok()
});

/// An SMTP reply code written in the diagnostic (`550: <a@b>: User unknown`).
static REPLY_IN_TEXT: LazyLock<Option<regex::Regex>> =
    LazyLock::new(|| regex::Regex::new(r"(^|[\s:(\[])[45]\d\d[\s:\-]").ok());

/// The last command `text` names.
pub fn command_in(text: &str) -> Option<Command> {
    let lower = text.to_ascii_lowercase();
    COMMANDS
        .iter()
        .filter_map(|(phrase, command)| lower.rfind(phrase).map(|at| (at, *command)))
        .max_by_key(|(at, _)| *at)
        .map(|(_, command)| command)
}

struct Compiled {
    set: RegexSet,
    /// The reason of each pattern in `set`, in table order.
    reasons: Vec<Reason>,
}

fn compile(table: &[(Reason, &[&str])]) -> Option<Compiled> {
    let mut patterns = Vec::new();
    let mut reasons = Vec::new();
    for (reason, phrases) in table {
        for p in *phrases {
            patterns.push(format!("(?i){p}"));
            reasons.push(*reason);
        }
    }
    // The tables are ours and tested (`every_phrase_compiles`); were one not to compile,
    // classification would fall back to codes rather than panic.
    // A few hundred case-insensitive patterns: the lazy DFA needs more room than the default
    // to stay the engine that runs (past its cache it gives way to much slower ones).
    RegexSetBuilder::new(&patterns)
        .size_limit(64 << 20)
        .dfa_size_limit(64 << 20)
        .build()
        .ok()
        .map(|set| Compiled { set, reasons })
}

static COMPILED: LazyLock<Option<Compiled>> = LazyLock::new(|| compile(PHRASES));
static LATE: LazyLock<Option<Compiled>> = LazyLock::new(|| compile(LATE_PHRASES));

fn first_match(compiled: &Option<Compiled>, text: &str) -> Option<Reason> {
    if text.is_empty() {
        return None;
    }
    let compiled = compiled.as_ref()?;
    compiled
        .set
        .matches(text)
        .iter()
        .next()
        .and_then(|i| compiled.reasons.get(i).copied())
}

/// The reason the first matching phrase of [`PHRASES`] names, if any.
pub fn reason_from_text(text: &str) -> Option<Reason> {
    first_match(&COMPILED, text)
}

/// The [`STATUS`] row for `status` (`5.1.1`): the exact code written with any class.
fn status_row(status: &str) -> Option<(Reason, bool)> {
    let (_, rest) = status.split_once('.')?;
    let key = format!("x.{rest}");
    STATUS
        .iter()
        .find(|(code, _, _)| *code == key)
        .map(|(_, reason, decisive)| (*reason, *decisive))
}

/// The reason for one recipient (see the module docs for the precedence).
pub fn classify(facts: &Facts<'_>) -> Reason {
    let action = facts.action.map(str::to_ascii_lowercase);
    if matches!(
        action.as_deref(),
        Some("delivered" | "relayed" | "expanded")
    ) {
        return Reason::Delivered;
    }
    let decisive = facts
        .status
        .and_then(status_row)
        .is_some_and(|(_, decisive)| decisive);
    // The MTA that talked to the remote server has already read its answer; a provider's own
    // error code is its verdict.
    if let Some(reason) = facts
        .category
        .and_then(category_reason)
        .or_else(|| provider_code(facts.diagnostic))
    {
        return reason;
    }
    let reason = base_reason(facts, action.as_deref());
    let command = if decisive {
        None
    } else {
        command_in(facts.diagnostic).or_else(|| command_in(facts.context))
    };
    let host_named = HOST_BLOCK
        .as_ref()
        .is_some_and(|set| set.is_match(facts.diagnostic));
    let directory = DIRECTORY
        .as_ref()
        .is_some_and(|set| set.is_match(facts.diagnostic));
    let reason = match command {
        Some(_) if host_named && reason == Reason::Blocked => reason,
        // A directory's own answer is an unknown user whichever command it came after.
        Some(_) if directory && reason == Reason::UserUnknown => reason,
        Some(command) => COMMAND_RULES
            .iter()
            .find(|(c, from, _)| *c == command && *from == reason)
            .map_or(reason, |(_, _, to)| *to),
        None => reason,
    };
    let subject = facts.status.and_then(|s| s.split('.').nth(1));
    let reason = if reason == Reason::UserUnknown
        && !decisive
        && command != Some(Command::Rcpt)
        && subject.is_some_and(|s| FILTER_SUBJECTS.contains(&s))
    {
        Reason::Filtered
    } else {
        reason
    };
    // "User unknown" with nothing else to go on (no status, no SMTP reply, no command named) is
    // a relay's or a filter's word for the recipient, not a directory's answer at RCPT TO; only
    // the words by which a mail system reports its own directory lookup ([`DIRECTORY_WORDS`])
    // stay an unknown user.
    let reason = if reason == Reason::UserUnknown
        && facts.status.is_none()
        && facts.reply_code.is_none()
        && command.is_none()
        && !REPLY_IN_TEXT
            .as_ref()
            .is_some_and(|r| r.is_match(facts.diagnostic))
        && !directory
    {
        Reason::Filtered
    } else {
        reason
    };
    // A receiving rule's "mailbox does not exist" is the rule's choice, not a lookup.
    let reason = if reason == Reason::UserUnknown
        && facts
            .reporting_mta
            .is_some_and(|host| RULE_REPORTER.as_ref().is_some_and(|set| set.is_match(host)))
    {
        Reason::Filtered
    } else {
        reason
    };
    // "Unknown address" about the sender's address is a refused sender, not a dead mailbox.
    let reason = if reason == Reason::UserUnknown && facts.about_sender {
        Reason::Rejected
    } else {
        reason
    };
    // A domain that does not resolve *for now* is a DNS failure, not an unknown host.
    let temporary = facts.status.is_some_and(|s| s.starts_with('4'))
        || facts.reply_code.is_some_and(|c| (400..500).contains(&c));
    if reason == Reason::HostUnknown && temporary && !permanent(facts.status, facts.reply_code) {
        return Reason::NetworkError;
    }
    reason
}

fn base_reason(facts: &Facts<'_>, action: Option<&str>) -> Reason {
    let status_reason = facts.status.and_then(status_row);
    let text_reason = reason_from_text(facts.diagnostic);
    if let Some((reason, true)) = status_reason {
        return match text_reason {
            Some(said) if OVERRIDE_DECISIVE.contains(&said) => said,
            _ => reason,
        };
    }
    if let Some(reason) = text_reason {
        return reason;
    }
    if let Some((reason, _)) = status_reason {
        return reason;
    }
    if let Some(reason) = first_match(&LATE, facts.diagnostic) {
        return reason;
    }
    if let Some(code) = facts.reply_code
        && let Some((_, reason)) = REPLY.iter().find(|(c, _)| *c == code)
    {
        return *reason;
    }
    if action == Some("delayed") {
        return Reason::Expired;
    }
    // Words that name no reason: the failure is known but its cause is not decided (Sisimai's
    // "onhold"); no words at all: undefined.
    if facts.diagnostic.trim().is_empty() {
        Reason::Undefined
    } else {
        Reason::OnHold
    }
}

/// Whether the failure is permanent: a 5xx reply or a 5.x.x status.
pub fn permanent(status: Option<&str>, reply_code: Option<u16>) -> bool {
    status.is_some_and(|s| s.starts_with('5'))
        || reply_code.is_some_and(|c| (500..600).contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_phrase_compiles() {
        for (reason, phrases) in PHRASES.iter().chain(LATE_PHRASES) {
            for p in *phrases {
                assert!(
                    regex::Regex::new(&format!("(?i){p}")).is_ok(),
                    "{reason:?}: {p}"
                );
            }
        }
        assert!(COMPILED.is_some() && LATE.is_some());
    }

    #[test]
    fn precedence() {
        let f = |diagnostic, status, reply_code, action| {
            classify(&Facts {
                diagnostic,
                status,
                reply_code,
                action,
                context: "",
                category: None,
                about_sender: false,
                reporting_mta: None,
            })
        };
        // A decisive status wins over wording.
        assert_eq!(
            f("550 rejected", Some("5.1.1"), Some(550), Some("failed")),
            Reason::UserUnknown
        );
        // Wording wins over a vague status.
        assert_eq!(
            f("552 Mailbox is full", Some("5.0.0"), Some(552), None),
            Reason::MailboxFull
        );
        assert_eq!(
            f("550 Message rejected as spam", Some("5.7.1"), None, None),
            Reason::SpamDetected
        );
        // Non-decisive status after wording.
        assert_eq!(f("", Some("5.7.1"), None, None), Reason::Rejected);
        assert_eq!(f("", None, Some(452), None), Reason::MailboxFull);
        assert_eq!(f("", None, None, Some("delayed")), Reason::Expired);
        assert_eq!(f("", None, None, Some("Delivered")), Reason::Delivered);
        assert_eq!(f("", None, None, None), Reason::Undefined);
    }

    #[test]
    fn a_directory_answer_after_data_stays_an_unknown_user() {
        let f = |diagnostic| {
            classify(&Facts {
                diagnostic,
                status: Some("5.0.0"),
                reply_code: Some(554),
                action: Some("failed"),
                context: ">>> DATA",
                category: None,
                about_sender: false,
                reporting_mta: None,
            })
        };
        assert_eq!(
            f(
                "554 delivery error: dd This user doesn't have a yahoo.com account (a@yahoo.com) [0]"
            ),
            Reason::UserUnknown
        );
        // Other words for an unknown user, after DATA, are a filter's.
        assert_eq!(f("554 5.0.0 user unknown"), Reason::Filtered);
    }

    #[test]
    fn provider_codes() {
        assert_eq!(
            provider_code("550 5.1.1 <a@b> - has sent to too many recipients this hour. IB607"),
            Some(Reason::Speeding)
        );
        assert_eq!(
            provider_code("550 5.5.0 Invalid recipient. LPN007_416"),
            Some(Reason::UserUnknown)
        );
        assert_eq!(
            provider_code("421 4.2.0 Service refused. OFR005_505 [505]"),
            Some(Reason::SystemError)
        );
        assert_eq!(
            provider_code("Mail rejected. OFR_506"),
            Some(Reason::SpamDetected)
        );
        assert_eq!(provider_code("ticket IB6070 at LPN0071"), None);
        assert_eq!(
            provider_code("550 5.1.0 <a@b> sender rejected. AUP#CDRBL"),
            Some(Reason::Blocked)
        );
        assert_eq!(provider_code("554 AUP#IPBL0101"), Some(Reason::Blocked));
    }

    #[test]
    fn permanence() {
        assert!(permanent(Some("5.1.1"), None));
        assert!(permanent(None, Some(550)));
        assert!(!permanent(Some("4.2.2"), Some(452)));
        assert!(!permanent(None, None));
    }
}
