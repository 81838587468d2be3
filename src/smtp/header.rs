//! Reading a message's header section (RFC 5322 2.2): where it ends,
//! its fields with their folded continuation lines, a field's name and
//! value. Pure functions on bytes; used to pick the DKIM signing domain and
//! to show and log a queued message (its Message-ID, its headers).

/// Headers (with their final CRLF) and body.
pub fn split(message: &[u8]) -> (&[u8], &[u8]) {
    match message.windows(4).position(|window| window == b"\r\n\r\n") {
        Some(at) => (&message[..at + 2], &message[at + 4..]),
        None => (message, &[]),
    }
}

/// Header fields, each with its continuation lines and final CRLF.
pub fn fields(headers: &[u8]) -> Vec<Vec<u8>> {
    let mut fields: Vec<Vec<u8>> = Vec::new();
    for line in headers.split_inclusive(|&b| b == b'\n') {
        match (line.first(), fields.last_mut()) {
            (Some(b' ' | b'\t'), Some(last)) => last.extend_from_slice(line),
            _ => fields.push(line.to_vec()),
        }
    }
    fields
}

pub fn field_name(field: &[u8]) -> &str {
    let end = field.iter().position(|&b| b == b':').unwrap_or(field.len());
    std::str::from_utf8(&field[..end]).unwrap_or("").trim_end()
}

/// The unfolded, trimmed value of the first `name` field (any case).
pub fn value(message: &[u8], name: &str) -> Option<String> {
    let (headers, _) = split(message);
    fields(headers)
        .into_iter()
        .find(|field| field_name(field).eq_ignore_ascii_case(name))
        .map(|field| {
            let value = String::from_utf8_lossy(&field[field_name(&field).len() + 1..]);
            value.split_whitespace().collect::<Vec<_>>().join(" ")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_folded_fields_and_the_end_of_the_header_section() {
        let message =
            b"Received: from a\r\n\tby b\r\nMessage-ID:\r\n <x@y>\r\nSubject: hi\r\n\r\nbody\r\n";
        let (headers, body) = split(message);
        assert_eq!(body, b"body\r\n");
        assert_eq!(fields(headers).len(), 3);
        assert_eq!(value(message, "message-id").as_deref(), Some("<x@y>"));
        assert_eq!(value(message, "Received").as_deref(), Some("from a by b"));
        assert_eq!(value(message, "To"), None);
        assert_eq!(
            value(b"Subject: no body", "subject").as_deref(),
            Some("no body")
        );
    }
}
