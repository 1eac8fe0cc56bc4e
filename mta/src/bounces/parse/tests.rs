use super::*;

const DSN: &str = "From: MAILER-DAEMON@mx.example.net\r\n\
To: 0000018c2f3a4b5c@c-abc.unmta.test\r\n\
Subject: Undelivered Mail Returned to Sender\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=delivery-status; boundary=\"b1\"\r\n\
\r\n\
--b1\r\n\
Content-Type: text/plain\r\n\
\r\n\
Your message could not be delivered.\r\n\
--b1\r\n\
Content-Type: message/delivery-status\r\n\
\r\n\
Reporting-MTA: dns; mx.example.net\r\n\
\r\n\
Final-Recipient: rfc822; gone@example.net\r\n\
Action: failed\r\n\
Status: 5.1.1\r\n\
Remote-MTA: dns; mailbox.example.net\r\n\
Diagnostic-Code: smtp; 550 5.1.1 <gone@example.net>: user unknown\r\n\
\r\n\
Final-Recipient: rfc822; <slow@example.net>\r\n\
Action: delayed\r\n\
Status: 4.4.1\r\n\
--b1--\r\n";

const ARF: &str = "From: fbl@isp.example\r\n\
To: fbl@c-abc.unmta.test\r\n\
Subject: FW: complaint\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=feedback-report;\r\n\tboundary=\"part\"\r\n\
\r\n\
--part\r\n\
Content-Type: text/plain\r\n\
\r\n\
This is an email abuse report.\r\n\
--part\r\n\
Content-Type: message/feedback-report\r\n\
\r\n\
Feedback-Type: abuse\r\n\
User-Agent: SomeGenerator/1.0\r\n\
Version: 1\r\n\
Original-Mail-From: <0000018c2f3a4b5c@c-abc.unmta.test>\r\n\
Original-Rcpt-To: <user@isp.example>\r\n\
Arrival-Date: Thu, 8 Mar 2005 14:00:00 EDT\r\n\
Reporting-MTA: dns; mail.isp.example\r\n\
\r\n\
--part\r\n\
Content-Type: message/rfc822\r\n\
\r\n\
From: app@yourdomain.com\r\n\
Subject: offer\r\n\
\r\n\
buy\r\n\
--part--\r\n";

#[test]
fn a_dsn_gives_each_recipient_its_action_and_reply() {
    let Ok(Report::Dsn(recipients)) = report(DSN.as_bytes()) else {
        panic!("not read as a DSN");
    };
    assert_eq!(recipients.len(), 2);
    let gone = &recipients[0];
    assert_eq!(gone.recipient, "gone@example.net");
    assert_eq!(gone.action, "failed");
    assert_eq!(gone.response.code, 550);
    assert_eq!(gone.response.enhanced_code.unwrap().to_string(), "5.1.1");
    assert!(gone.response.content.contains("user unknown"));
    assert_eq!(gone.remote_mta.as_deref(), Some("mailbox.example.net"));
    assert_eq!(recipients[1].recipient, "slow@example.net");
    assert_eq!(recipients[1].action, "delayed");
}

#[test]
fn an_arf_report_gives_its_fields() {
    let Ok(Report::Arf(arf)) = report(ARF.as_bytes()) else {
        panic!("not read as ARF");
    };
    assert_eq!(arf.feedback_type, "abuse");
    assert_eq!(arf.user_agent.as_deref(), Some("SomeGenerator/1.0"));
    assert_eq!(
        arf.original_mail_from.as_deref(),
        Some("0000018c2f3a4b5c@c-abc.unmta.test")
    );
    assert_eq!(arf.original_rcpt_to.as_deref(), Some("user@isp.example"));
    assert_eq!(arf.reporting_mta.as_deref(), Some("mail.isp.example"));
}

#[test]
fn anything_else_is_refused_with_a_reason() {
    let cases: [&[u8]; 6] = [
        b"",
        b"Subject: hi\r\n\r\njust text\r\n",
        b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n\r\nhi\r\n--x--\r\n",
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\r\n\r\n--x\r\n\r\nhi\r\n--x--\r\n",
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\r\n\r\n--x\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x\r\n--x--\r\n",
        b"Content-Type: multipart/report; report-type=feedback-report; boundary=x\r\n\r\n--x\r\nContent-Type: message/feedback-report\r\n\r\nVersion: 1\r\n--x--\r\n",
    ];
    for case in cases {
        assert!(report(case).is_err(), "{}", String::from_utf8_lossy(case));
    }
    // Garbage of every length never panics.
    let mut junk = DSN.as_bytes().to_vec();
    for cut in (0..junk.len()).step_by(7) {
        let _ = report(&junk[..cut]);
    }
    junk.iter_mut().step_by(3).for_each(|b| *b = b'\xff');
    let _ = report(&junk);
}
