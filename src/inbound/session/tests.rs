//! The session state machine on commands written here.

use super::*;
use crate::config::Config;
use crate::smtp::command::parse;

/// Admits everything, or defers everything after `limit` recipients.
struct Admit(usize);

impl Admission for Admit {
    fn admit(
        &self,
        _gateway: &str,
        _app: &str,
        receivers: &[Option<usize>],
        _fingerprint: u64,
    ) -> Result<Projection, Deferral> {
        if receivers.len() <= self.0 {
            Ok(Projection::AT_ONCE)
        } else {
            Err(Deferral {
                reason: DeferReason::QueueDelay,
                projected_wait: 3_700.0,
                retry_after: 2_800.0,
            })
        }
    }
}

fn run(session: &mut Session<'_>, line: &str) -> Step {
    session.command(parse(line.as_bytes()))
}

/// A session for a loopback client.
fn local_session<'a>(
    config: &'a Config,
    policy: &'a Policy,
    admission: &'a dyn Admission,
) -> Session<'a> {
    Session::new(
        &config.server,
        policy,
        admission,
        "127.0.0.1".parse().unwrap(),
    )
}

fn code(step: Step) -> u16 {
    match step {
        Step::Reply(reply) | Step::Data(reply) | Step::Close(reply) | Step::StartTls(reply) => {
            reply.code
        }
        Step::Refuse(refusal) | Step::RefuseAndClose(refusal) => refusal.reply.code,
        Step::Authenticate { .. } => 0,
    }
}

#[test]
fn walks_a_transaction() {
    let config = Config::embedded_default();
    let policy = crate::policy::Policy::from_config(&config);
    let mut session = local_session(&config, &policy, &Admit(usize::MAX));
    assert_eq!(code(run(&mut session, "MAIL FROM:<a@b.test>")), 503);
    assert_eq!(code(run(&mut session, "EHLO app.test")), 250);
    assert_eq!(code(run(&mut session, "RCPT TO:<x@y.test>")), 503);
    assert_eq!(code(run(&mut session, "DATA")), 503);
    assert_eq!(
        code(run(&mut session, "MAIL FROM:<a@b.test> SIZE=99999999999")),
        552
    );
    assert_eq!(code(run(&mut session, "MAIL FROM:<a@b.test>")), 250);
    assert_eq!(code(run(&mut session, "MAIL FROM:<a@b.test>")), 503);
    assert_eq!(code(run(&mut session, "DATA")), 503);
    assert_eq!(code(run(&mut session, "RCPT TO:<x@y.test>")), 250);
    assert!(matches!(run(&mut session, "DATA"), Step::Data(_)));
    let (transaction, body) = session.data_end(Ok(b"hi\r\n".to_vec())).unwrap();
    assert_eq!(transaction.recipients, vec!["x@y.test"]);
    assert_eq!(body, b"hi\r\n");
    assert!(!session.in_transaction());
    assert_eq!(code(run(&mut session, "QUIT")), 221);
}

#[test]
fn limits_recipients_and_errors() {
    let mut config = Config::embedded_default();
    config.server.max_recipients = 2;
    config.server.max_errors = 3;
    let policy = crate::policy::Policy::from_config(&config);
    let mut session = local_session(&config, &policy, &Admit(usize::MAX));
    run(&mut session, "EHLO app.test");
    run(&mut session, "MAIL FROM:<>");
    assert_eq!(code(run(&mut session, "RCPT TO:<a@y.test>")), 250);
    assert_eq!(code(run(&mut session, "RCPT TO:<b@y.test>")), 250);
    assert_eq!(code(run(&mut session, "RCPT TO:<c@y.test>")), 452);
    assert_eq!(code(run(&mut session, "FOO")), 500);
    assert_eq!(code(run(&mut session, "RCPT TO:<bad>")), 501);
    assert!(
        matches!(run(&mut session, "BAR"), Step::RefuseAndClose(refusal) if refusal.reply.code == 421)
    );
}

#[test]
fn thousands_of_excess_recipients_end_the_session_and_are_logged_once() {
    let mut config = Config::embedded_default();
    config.server.max_recipients = 2;
    config.server.max_errors = 3;
    let policy = crate::policy::Policy::from_config(&config);
    let mut session = local_session(&config, &policy, &Admit(usize::MAX));
    run(&mut session, "EHLO app.test");
    run(&mut session, "MAIL FROM:<>");
    run(&mut session, "RCPT TO:<a@y.test>");
    run(&mut session, "RCPT TO:<b@y.test>");
    let mut logged = 0;
    let mut steps = 0;
    let closed = loop {
        steps += 1;
        assert!(steps < 10_000, "never closed");
        match run(&mut session, &format!("RCPT TO:<x{steps}@y.test>")) {
            Step::Refuse(refusal) => {
                assert_eq!(refusal.reply.code, 452);
                logged += usize::from(!refusal.quiet);
            }
            Step::RefuseAndClose(refusal) => break refusal,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(closed.reply.code, 421);
    assert_eq!(logged, 1, "one log line for the run");
    // The overshoot allowance, then max_errors (3) of them as errors.
    assert_eq!(steps as u32, RECIPIENT_OVERSHOOT + 3);
}

#[test]
fn defers_at_rcpt_when_admission_says_so() {
    let config = Config::embedded_default();
    let policy = crate::policy::Policy::from_config(&config);
    let admission = Admit(1);
    let mut session = local_session(&config, &policy, &admission);
    run(&mut session, "EHLO app.test");
    run(&mut session, "MAIL FROM:<a@b.test>");
    assert_eq!(code(run(&mut session, "RCPT TO:<x@y.test>")), 250);
    let Step::Reply(deferred) = run(&mut session, "RCPT TO:<z@y.test>") else {
        panic!("a deferral keeps the session open");
    };
    assert_eq!(
        deferred.to_string(),
        "451 4.7.1 Rate limited: the gateway is sending slowly and new mail would wait about 1h2m here; try again in 47m"
    );
    assert!(
        matches!(run(&mut session, "DATA"), Step::Data(_)),
        "the first recipient stays"
    );
}

#[test]
fn closes_a_session_that_only_sends_junk() {
    let mut config = Config::embedded_default();
    config.server.max_junk_commands = 3;
    let policy = crate::policy::Policy::from_config(&config);
    let mut session = local_session(&config, &policy, &Admit(usize::MAX));
    assert_eq!(
        code(run(&mut session, "EHLO app.test")),
        250,
        "the first EHLO is not junk"
    );
    for line in ["NOOP", "RSET", "EHLO again.test"] {
        assert_eq!(code(run(&mut session, line)), 250);
    }
    assert!(
        matches!(run(&mut session, "NOOP"), Step::RefuseAndClose(refusal) if refusal.reply.code == 421)
    );

    // A message in between starts the count again.
    let mut session = local_session(&config, &policy, &Admit(usize::MAX));
    run(&mut session, "EHLO app.test");
    for _ in 0..10 {
        for line in [
            "RSET",
            "NOOP",
            "MAIL FROM:<a@b.test>",
            "RCPT TO:<x@y.test>",
            "DATA",
        ] {
            assert_ne!(code(run(&mut session, line)), 421);
        }
        assert!(session.data_end(Ok(b"hi\r\n".to_vec())).is_ok());
    }
}

#[test]
fn a_reset_after_a_refused_recipient_or_between_messages_is_not_junk() {
    let mut config = Config::embedded_default();
    config.server.max_junk_commands = 3;
    let policy = crate::policy::Policy::from_config(&config);
    // Every recipient deferred: Python's smtplib answers each with RSET
    // on the one connection it sends a whole run on.
    let mut session = local_session(&config, &policy, &Admit(0));
    run(&mut session, "EHLO app.test");
    for _ in 0..20 {
        assert_eq!(code(run(&mut session, "MAIL FROM:<a@b.test>")), 250);
        assert_eq!(code(run(&mut session, "RCPT TO:<x@y.test>")), 451);
        assert_eq!(code(run(&mut session, "RSET")), 250);
    }
    // The allowance owed is one command, not a free pass.
    for line in ["RSET", "NOOP", "RSET"] {
        assert_eq!(code(run(&mut session, line)), 250);
    }
    assert!(
        matches!(run(&mut session, "NOOP"), Step::RefuseAndClose(refusal) if refusal.reply.code == 421)
    );

    // A MAIL that is accepted and reset, over and over, moves no mail.
    let mut session = local_session(&config, &policy, &Admit(usize::MAX));
    run(&mut session, "EHLO app.test");
    let mut closed = false;
    for _ in 0..10 {
        run(&mut session, "MAIL FROM:<a@b.test>");
        run(&mut session, "RCPT TO:<x@y.test>");
        if matches!(run(&mut session, "NOOP"), Step::RefuseAndClose(_)) {
            closed = true;
            break;
        }
        run(&mut session, "RSET");
    }
    assert!(closed, "NOOPs inside accepted transactions still count");
}

fn reason(step: Step) -> Option<RefusalReason> {
    match step {
        Step::Refuse(refusal) | Step::RefuseAndClose(refusal) => Some(refusal.reason),
        _ => None,
    }
}

/// Defers every recipient as beyond the volume budget in one message.
struct OverBudget;

impl Admission for OverBudget {
    fn admit(&self, _: &str, _: &str, _: &[Option<usize>], _: u64) -> Result<Projection, Deferral> {
        Err(Deferral {
            reason: DeferReason::Recipients,
            projected_wait: 0.0,
            retry_after: 0.0,
        })
    }
}

#[test]
fn refusals_carry_the_reason_they_are_counted_under() {
    let config = Config::parse(
        r#"
        [server]
        max_message_size = "1KiB"
        max_recipients = 1
        [[gateways]]
        name = "g"
        address = "127.0.0.1:25"
        [[apps]]
        name = "billing"
        networks = ["127.0.0.0/8"]
        senders = ["billing.test"]
        "#,
    )
    .unwrap();
    let policy = crate::policy::Policy::from_config(&config);
    let mut session = local_session(&config, &policy, &Admit(usize::MAX));
    assert_eq!(
        reason(run(&mut session, "MAIL FROM:<a@billing.test>")),
        Some(RefusalReason::Sequence)
    );
    assert_eq!(
        reason(run(&mut session, "FOO")),
        Some(RefusalReason::Syntax)
    );
    assert_eq!(reason(run(&mut session, "EHLO app.test")), None);
    assert_eq!(
        reason(run(&mut session, "STARTTLS")),
        Some(RefusalReason::TlsUnavailable)
    );
    assert_eq!(
        reason(run(&mut session, "MAIL FROM:<a@billing.test> SIZE=2000")),
        Some(RefusalReason::TooBig)
    );
    assert_eq!(
        reason(run(&mut session, "MAIL FROM:<a@elsewhere.test>")),
        Some(RefusalReason::RelayDenied)
    );
    assert_eq!(
        reason(run(&mut session, "MAIL FROM:<a@billing.test>")),
        None
    );
    assert_eq!(reason(run(&mut session, "RCPT TO:<x@y.test>")), None);
    assert_eq!(
        reason(run(&mut session, "RCPT TO:<z@y.test>")),
        Some(RefusalReason::TooManyRecipients)
    );
    run(&mut session, "DATA");
    let refused = session.data_end(Err(DataError::BareCrOrLf));
    assert_eq!(
        reason(refused.unwrap_err().into()),
        Some(RefusalReason::BadContent)
    );
    run(&mut session, "MAIL FROM:<a@billing.test>");
    run(&mut session, "RCPT TO:<x@y.test>");
    run(&mut session, "DATA");
    let looping = "Received: from somewhere\r\n".repeat(trace::MAX_HOPS) + "\r\nhi\r\n";
    let refused = session.data_end(Ok(looping.into_bytes()));
    assert_eq!(
        reason(refused.unwrap_err().into()),
        Some(RefusalReason::MailLoop)
    );
    // The refusal that uses up max_errors is counted as too_many_errors.
    let last = loop {
        match run(&mut session, "FOO") {
            Step::Refuse(refusal) => assert_eq!(refusal.reason, RefusalReason::Syntax),
            last => break last,
        }
    };
    assert!(
        matches!(&last, Step::RefuseAndClose(refusal) if refusal.reply.code == 421),
        "{last:?}"
    );
    assert_eq!(reason(last), Some(RefusalReason::TooManyErrors));

    // The volume budget's 452 4.5.3 is a shaping deferral: a plain
    // reply, not counted as a refusal (unlike max_recipients' 452).
    let mut session = local_session(&config, &policy, &OverBudget);
    run(&mut session, "EHLO app.test");
    run(&mut session, "MAIL FROM:<a@billing.test>");
    let Step::Reply(deferred) = run(&mut session, "RCPT TO:<x@y.test>") else {
        panic!("a deferral is not a refusal");
    };
    assert_eq!(deferred.code, 452);
}

#[test]
fn refuses_looping_mail() {
    let config = Config::embedded_default();
    let policy = crate::policy::Policy::from_config(&config);
    let mut session = local_session(&config, &policy, &Admit(usize::MAX));
    let mut deliver = |hops: usize| {
        run(&mut session, "EHLO app.test");
        run(&mut session, "MAIL FROM:<a@b.test>");
        run(&mut session, "RCPT TO:<x@y.test>");
        run(&mut session, "DATA");
        let body = "Received: from somewhere\r\n".repeat(hops) + "Subject: x\r\n\r\nhi\r\n";
        session
            .data_end(Ok(body.into_bytes()))
            .map(|_| ())
            .map_err(|refused| code(refused.into()))
    };
    assert_eq!(deliver(49), Ok(()));
    assert_eq!(deliver(50), Err(554));
}

#[test]
fn a_login_owns_its_listed_senders_even_where_another_app_lists_them_too() {
    let hash = "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHRzYWx0$yKBsPW3CNbM1OFNYeNb3+Q";
    let config = Config::parse(&format!(
        "[[gateways]]\nname = \"g\"\naddress = \"127.0.0.1:25\"\n\
         [[apps]]\nname = \"corp\"\nuser = \"corp\"\npassword_hash = \"{hash}\"\nsenders = [\"example.com\"]\n\
         [[apps]]\nname = \"portal\"\nuser = \"portal\"\npassword_hash = \"{hash}\"\nsenders = [\"noreply@example.com\"]\n\
         [[apps]]\nname = \"loose\"\nuser = \"loose\"\npassword_hash = \"{hash}\"\n"
    ))
    .unwrap();
    let policy = crate::policy::Policy::from_config(&config);
    let admission = Admit(usize::MAX);
    let mail_as = |lane: Option<usize>| {
        let mut session = local_session(&config, &policy, &admission);
        run(&mut session, "EHLO app.test");
        if lane.is_some() {
            session.login_result(lane).unwrap();
        }
        code(run(&mut session, "MAIL FROM:<noreply@example.com>"))
    };
    assert_eq!(mail_as(None), 530, "no login");
    assert_eq!(mail_as(Some(0)), 250, "corp lists example.com");
    assert_eq!(mail_as(Some(1)), 250, "portal lists the address");
    assert_eq!(mail_as(Some(2)), 550, "loose lists nothing: not its sender");
}
