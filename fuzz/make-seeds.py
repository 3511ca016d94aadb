#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/seeds/<target>/ (committed; the
fuzzers' own corpora grow under fuzz/corpus/, which is not). The documents
are the RFCs' own examples where there are some; certificates, keys and
OCSP responses come from fuzz/fixtures (fixtures/make.sh) and openssl."""
import json, os, struct, subprocess, tempfile, pathlib

here = pathlib.Path(__file__).resolve().parent
fx = here / "fixtures"
seeds = here / "seeds"


def put(target, name, data):
    d = seeds / target
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (d / name).write_bytes(data)


def j(obj):
    return json.dumps(obj, indent=2)


# RFC 8555 §7.1.1
put("acme_directory", "rfc8555", j({
    "newNonce": "https://example.com/acme/new-nonce",
    "newAccount": "https://example.com/acme/new-account",
    "newOrder": "https://example.com/acme/new-order",
    "newAuthz": "https://example.com/acme/new-authz",
    "revokeCert": "https://example.com/acme/revoke-cert",
    "keyChange": "https://example.com/acme/key-change",
    "meta": {"termsOfService": "https://example.com/acme/terms/2017-5-30",
             "website": "https://www.example.com/",
             "caaIdentities": ["example.com"],
             "externalAccountRequired": False}}))
put("acme_directory", "ari-profiles", j({
    "newNonce": "https://ca/n", "newAccount": "https://ca/a", "newOrder": "https://ca/o",
    "revokeCert": "https://ca/r", "keyChange": "https://ca/k", "renewalInfo": "https://ca/ari",
    "meta": {"profiles": {"classic": "The profile you know", "shortlived": "6 days"}}}))

problem = {
    "type": "urn:ietf:params:acme:error:malformed",
    "detail": "Some of the identifiers requested were rejected",
    "subproblems": [
        {"type": "urn:ietf:params:acme:error:malformed",
         "detail": "Invalid underscore in DNS name \"_example.org\"",
         "identifier": {"type": "dns", "value": "_example.org"}},
        {"type": "urn:ietf:params:acme:error:rejectedIdentifier",
         "detail": "This CA will not issue for \"example.net\"",
         "identifier": {"type": "dns", "value": "example.net"}}]}
put("acme_problem", "rfc8555-compound", j(problem))
put("acme_problem", "rate-limited", j({"type": "urn:ietf:params:acme:error:rateLimited",
                                       "detail": "too many", "status": 429, "instance": "https://ca/i"}))
put("acme_problem", "other", j({"type": "about:blank", "status": 400}))

# RFC 8555 §7.1.3
put("acme_order", "rfc8555", j({
    "status": "valid", "expires": "2016-01-20T14:09:07.99Z",
    "identifiers": [{"type": "dns", "value": "www.example.org"},
                    {"type": "dns", "value": "example.org"}],
    "notBefore": "2016-01-01T00:00:00Z", "notAfter": "2016-01-08T00:00:00Z",
    "authorizations": ["https://example.com/acme/authz/PAniVnsZcis",
                       "https://example.com/acme/authz/r4HqLzrSrpI"],
    "finalize": "https://example.com/acme/order/TOlocE8rfgo/finalize",
    "certificate": "https://example.com/acme/cert/mAt3xBGaobw"}))
put("acme_order", "invalid-ip-replaces", j({
    "status": "invalid", "identifiers": [{"type": "ip", "value": "2001:db8::1"},
                                         {"type": "dns", "value": "*.Example.COM."}],
    "authorizations": [], "finalize": "https://ca/f", "error": problem,
    "replaces": "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE", "profile": "shortlived"}))

# RFC 8555 §7.1.4, §8
http01 = {"type": "http-01", "url": "https://example.com/acme/chall/prV_B7yEyA4",
          "status": "pending", "token": "DGyRejmCefe7v4NfDGDKfA"}
dns01 = {"type": "dns-01", "url": "https://example.com/acme/chall/Rg5dV14Gh1Q",
         "status": "invalid", "token": "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA",
         "error": {"type": "urn:ietf:params:acme:error:dns", "detail": "NXDOMAIN"}}
put("acme_authorization", "rfc8555", j({
    "status": "valid", "expires": "2015-03-01T14:09:07.99Z",
    "identifier": {"type": "dns", "value": "www.example.org"},
    "challenges": [dict(http01, status="valid", validated="2014-12-01T12:05:58.16Z")]}))
put("acme_authorization", "wildcard", j({
    "status": "pending", "identifier": {"type": "dns", "value": "example.org"},
    "challenges": [dns01, {"type": "tls-alpn-01", "url": "https://ca/c", "status": "pending", "token": "t"},
                   {"type": "new-99", "url": "https://ca/x", "status": "processing"}],
    "wildcard": True}))
put("acme_challenge", "http-01", j(http01))
put("acme_challenge", "dns-01-invalid", j(dns01))
put("acme_challenge", "tls-alpn-01", j({"type": "tls-alpn-01", "url": "https://ca/c", "status": "valid",
                                        "token": "t", "validated": "2024-01-01T00:00:00Z"}))

# RFC 9773 §4.2
put("renewal_info", "rfc9773", j({"suggestedWindow": {"start": "2025-01-02T04:00:00Z",
                                                      "end": "2025-01-03T04:00:00Z"},
                                  "explanationURL": "https://acme.example.com/docs/ari"}))
put("renewal_info", "offsets", j({"suggestedWindow": {"start": "2025-01-02T04:00:00.5+02:00",
                                                      "end": "2025-01-03T04:00:00-00:30"}}))


def openssl(*args, data=None):
    return subprocess.run(["openssl", *args], input=data, check=True, capture_output=True).stdout


with tempfile.TemporaryDirectory() as tmp:
    keys = {}
    for name, args in [("p256", ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]),
                       ("p384", ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"]),
                       ("ed25519", ["genpkey", "-algorithm", "ED25519"]),
                       ("rsa2048", ["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"])]:
        keys[name] = openssl(*args)
    for name, pem in keys.items():
        der = openssl("pkcs8", "-topk8", "-nocrypt", "-outform", "DER", data=pem)
        put("account_key", f"pem-{name}", b"\x00" + pem)
        put("account_key", f"der-{name}", b"\x01" + der)
        put("certificate_key", f"pkcs8-{name}", pem)
    put("account_key", "eab-url-safe", b"\x02" + b"zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W")
    put("account_key", "eab-standard", b"\x02" + b"+/8=")
    put("certificate_key", "sec1-p256", openssl("ec", "-outform", "PEM", data=keys["p256"]))
    put("certificate_key", "pkcs1-rsa2048", openssl("rsa", "-traditional", data=keys["rsa2048"]))

leaf_pem = (fx / "leaf.pem").read_bytes()
ca_pem = (fx / "ca.pem").read_bytes()
leaf_der = (fx / "leaf.der").read_bytes()
ca_der = (fx / "ca.der").read_bytes()
leaf_key = (fx / "leaf.key").read_bytes()
put("cert_chain", "pem-leaf-ca", b"\x00" + leaf_pem + ca_pem)
put("cert_chain", "der-leaf-ca", b"\x01" + struct.pack(">H", len(leaf_der)) + leaf_der
    + struct.pack(">H", len(ca_der)) + ca_der)
put("cert_chain", "der-leaf", b"\x01" + struct.pack(">H", len(leaf_der)) + leaf_der)
put("cert_record", "record", leaf_key + leaf_pem + ca_pem)
put("cert_record", "record-crlf", (leaf_key + leaf_pem).replace(b"\n", b"\r\n"))
for state in ["good", "revoked"]:
    put("ocsp_response", state, (fx / f"ocsp-{state}.der").read_bytes())
put("ocsp_response", "unauthorized", bytes.fromhex("30030a0106"))

for i, name in enumerate(["example.com", "*.Example.COM.", "Bücher.example", "*.bücher.example",
                          "192.0.2.1", "[2001:db8::1]", "::ffff:192.0.2.1", "localhost",
                          "xn--bcher-kva.example", "a.b.c.d.e.example", "me@example.com",
                          "https://acme-v02.api.letsencrypt.org/directory", "a,b.com,A.com",
                          "ipv6-x.test"]):
    put("identifier", f"seed-{i:02}", name)

for i, v in enumerate(["120", " 0 ", "18446744073709551615", "Wed, 21 Oct 2015 07:28:00 GMT",
                       "Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994",
                       "Tue, 01 Jan 2030 00:00:10 GMT"]):
    put("retry_after", f"seed-{i:02}", v)

put("link_header", "rfc8555", '<https://example.com/acme/directory>;rel="index", '
    '<https://example.com/acme/cert/mAt3xBGaobw/1>;rel="alternate"')
put("link_header", "structured", "<https://ca/dir>; rel=up\0https://ca/cert/1\0alternate\0a title"
    "\0https://ca/dir\0index\0")

records = [
    ("account", {"url": "https://ca/acct/1", "contact": ["mailto:me@example.com"]}),
    ("eab", {"eab_kid": "kid-1", "eab_hmac_key": "c2VjcmV0"}),
    ("challenge", {"solver": "node-a", "identifier": "*.example.com", "challenge_type": "dns-01",
                   "token": "tok", "key_authorization": "tok.thumb", "url": "https://ca/c", "created": 1700000000,
                   "dns_name": "_acme-challenge.example.com", "dns_value": "abc"}),
    ("lock", {"created": 1700000000.25, "pid": 42, "owner": "f00d", "fence": 7}),
    ("retry", {"attempts": 3, "next_attempt": 1700000600}),
    ("storage-clean", {"last_run": 1700000000, "next_run": 1700086400}),
    ("cert-metadata", {"names": ["example.com"], "issuer_key": "local", "key_type": "ecdsa_p256",
                       "serial": "01", "not_before": 1700000000, "not_after": 1707776000,
                       "ari_cert_id": "a.b"}),
]
for i, (name, rec) in enumerate(records):
    put("stored_records", name, bytes([i]) + json.dumps(rec).encode())
print("seeds written to", seeds)
