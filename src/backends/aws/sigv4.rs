//! AWS Signature Version 4 (`AWS4-HMAC-SHA256`), with ring's SHA-256 and HMAC.
//!
//! Only what a query-API request needs: a method, a path, an already canonical query
//! string, a few headers and a payload. Checked against AWS's published test vector
//! (`get-vanilla`), against botocore's signer (same inputs, same signatures) and, in
//! tests/backend_aws.rs, against moto's signature check.

use std::fmt;

use ring::{digest, hmac};

/// Credentials of an IAM user or role. `Debug` never shows the secret or the token.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("session_token", &self.session_token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// One request to sign.
pub struct Request<'a> {
    pub method: &'a str,
    /// The URI path, already URI-encoded (`/` for the query APIs).
    pub path: &'a str,
    /// The canonical query string (parameters sorted and URI-encoded), often empty.
    pub query: &'a str,
    /// Headers to sign, every one of them sent with the request. `host` and
    /// `x-amz-date` must be among them; names in any case.
    pub headers: &'a [(&'a str, &'a str)],
    pub payload: &'a [u8],
    pub region: &'a str,
    pub service: &'a str,
    /// The request time as `YYYYMMDDTHHMMSSZ`, the value of `x-amz-date`.
    pub amz_date: &'a str,
}

/// The value of the `Authorization` header for `req`.
pub fn authorization(creds: &Credentials, req: &Request<'_>) -> String {
    let mut headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.split_whitespace().collect::<Vec<_>>().join(" ")))
        .collect();
    headers.sort();
    let signed_headers = headers.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(";");
    let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let canonical_request = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method,
        req.path,
        req.query,
        canonical_headers,
        signed_headers,
        hex(digest::digest(&digest::SHA256, req.payload).as_ref())
    );
    let date = &req.amz_date[..req.amz_date.len().min(8)];
    let scope = format!("{date}/{}/{}/aws4_request", req.region, req.service);
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{scope}\n{}",
        req.amz_date,
        hex(digest::digest(&digest::SHA256, canonical_request.as_bytes()).as_ref())
    );
    let key = signing_key(&creds.secret_access_key, date, req.region, req.service);
    let signature = hex(hmac::sign(&key, string_to_sign.as_bytes()).as_ref());
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
        creds.access_key_id
    )
}

fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> hmac::Key {
    let mut key = hmac::Key::new(hmac::HMAC_SHA256, format!("AWS4{secret}").as_bytes());
    for part in [date, region, service, "aws4_request"] {
        key = hmac::Key::new(hmac::HMAC_SHA256, hmac::sign(&key, part.as_bytes()).as_ref());
    }
    key
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `s` URI-encoded as SigV4 and the query APIs want it: everything but `A-Za-z0-9-_.~`
/// as `%XX`.
pub fn uri_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(token: Option<&str>) -> Credentials {
        Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: token.map(str::to_string),
        }
    }

    const DATE: &str = "20150830T123600Z";

    fn ec2_post<'a>(headers: &'a [(&'a str, &'a str)], payload: &'a [u8]) -> Request<'a> {
        Request {
            method: "POST",
            path: "/",
            query: "",
            headers,
            payload,
            region: "us-east-1",
            service: "ec2",
            amz_date: DATE,
        }
    }

    #[test]
    fn aws_test_suite_get_vanilla() {
        let headers = [("Host", "example.amazonaws.com"), ("X-Amz-Date", DATE)];
        let req = Request {
            method: "GET",
            path: "/",
            query: "",
            headers: &headers,
            payload: b"",
            region: "us-east-1",
            service: "service",
            amz_date: DATE,
        };
        assert_eq!(
            authorization(&example(None), &req),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    // Expected signatures computed with botocore's `SigV4Auth` on the same inputs.
    #[test]
    fn matches_botocore_for_an_ec2_query_post() {
        let headers = [
            ("content-type", "application/x-www-form-urlencoded; charset=utf-8"),
            ("host", "ec2.us-east-1.amazonaws.com"),
            ("x-amz-date", DATE),
        ];
        let auth = authorization(&example(None), &ec2_post(&headers, b"Action=DescribeInstances&Version=2016-11-15"));
        assert!(auth.ends_with(
            "SignedHeaders=content-type;host;x-amz-date, \
             Signature=16bec6625521eb1b2a944bb8409fdd5a54007d61862cf7074d07d2e75a3a4950"
        ));
    }

    #[test]
    fn signs_the_session_token_header() {
        let headers = [
            ("content-type", "application/x-www-form-urlencoded; charset=utf-8"),
            ("host", "ec2.us-east-1.amazonaws.com"),
            ("x-amz-date", DATE),
            ("x-amz-security-token", "SESSIONTOKEN/+="),
        ];
        let auth = authorization(
            &example(Some("SESSIONTOKEN/+=")),
            &ec2_post(&headers, b"Action=DescribeInstances&Version=2016-11-15"),
        );
        assert!(auth.ends_with(
            "SignedHeaders=content-type;host;x-amz-date;x-amz-security-token, \
             Signature=fc36f3ca2ffb2d6bdc5d8f6c65201a880ad56921b299a5a85035cf2b52511186"
        ));
    }

    #[test]
    fn host_with_port_and_encoded_payload() {
        let headers = [
            ("host", "127.0.0.1:5000"),
            ("content-type", "application/x-www-form-urlencoded; charset=utf-8"),
            ("x-amz-date", DATE),
        ];
        let mut req = ec2_post(
            &headers,
            b"Action=RunInstances&Version=2016-11-15&TagSpecification.1.Tag.1.Key=kpool.dev%2Fmachine",
        );
        req.region = "us-west-2";
        assert!(authorization(&example(None), &req)
            .ends_with("Signature=756da192aaa26436ffb15ede822a1ba893ebdf19b28d4b7faac53ddc864accc7"));
    }

    #[test]
    fn debug_hides_secrets() {
        let shown = format!("{:?}", example(Some("tok")));
        assert!(shown.contains("AKIDEXAMPLE"));
        assert!(!shown.contains("wJalr") && !shown.contains("tok\""));
    }

    #[test]
    fn uri_encoding() {
        assert_eq!(uri_encode("kpool.dev/machine a~b_c-d"), "kpool.dev%2Fmachine%20a~b_c-d");
        assert_eq!(uri_encode("é+="), "%C3%A9%2B%3D");
    }
}
