"""CallbackCrypto against WeCom's published sample vectors and against an independent computation.

The sample vectors are WeCom's own (see the comments where they are defined); everything else is
checked against hashlib and a ciphertext built or opened here with `cryptography` directly, so a
bug shared by encrypt and decrypt (IV, padding block, byte order) cannot hide behind a round trip.
"""

from __future__ import annotations

import base64
import hashlib
import struct
import xml.etree.ElementTree as ET

import msgspec
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from streams.serving.wecom.callback_crypto import (MAX_XML_BYTES, CallbackCrypto, CallbackError,
                                                   ContactChange, parse_contact_change)

# --- WeCom's sample: the page "加解密方案说明" (举例说明) and the WXBizMsgCrypt SDK samples ------
# Token, EncodingAESKey and corp id of the example on "加解密方案说明", also the configuration of
# the SDK's C#, Java and PHP Sample files.
DOC_TOKEN = "QDG6eK"
DOC_AES_KEY = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"
DOC_CORP_ID = "wx5823bf96d3bd56c7"

# The URL-verification GET of the SDK samples (示例一: "GET /cgi-bin/wxpush?msg_signature=5c45ff5e…").
# The plaintext is the answer the independent implementations' tests expect for it.
DOC_GET_SIGNATURE = "5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3"
DOC_GET_TIMESTAMP = "1409659589"
DOC_GET_NONCE = "263014780"
DOC_GET_ECHOSTR = ("P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+"
                   "FZXvnaqQ==")
DOC_GET_PLAINTEXT = "1616140317555161061"

# The callback POST of "加解密方案说明" 举例说明 (and the SDKs' 示例二), with its signature, the
# sorted string it is computed from (第二步) and the decrypted message (第三步). The page shows the
# message indented; its bytes are the elements joined by "\n", as the SDK ports' tests assert.
DOC_POST_SIGNATURE = "477715d11cdb4164915debcba66cb864d751f3e6"
DOC_POST_TIMESTAMP = "1409659813"
DOC_POST_NONCE = "1372623149"
DOC_POST_ENCRYPT = (
    "RypEvHKD8QQKFhvQ6QleEB4J58tiPdvo+rtK1I9qca6aM/wvqnLSV5zEPeusUiX5L5X/0lWfrf0QADHHhGd3QczcdCU"
    "pj911L3vg3W/sYYvuJTs3TUUkSUXxaccAS0qhxchrRYt66wiSpGLYL42aM6A8dTT+6k4aSknmPj48kzJs8qLjvd4Xgp"
    "ue06DOdnLxAUHzM6+kDZ+HMZfJYuR+LtwGc2hgf5gsijff0ekUNXZiqATP7PF5mZxZ3Izoun1s4zG4LUMnvw2r+KqCK"
    "Iw+3IQH03v+BCA9nMELNqbSf6tiWSrXJB3LAVGUcallcrw8V2t9EL4EhzJWrQUax5wLVMNS0+rUPA3k22Ncx4XXZS9o"
    "0MBH27Bo6BpNelZpS+/uh9KsNlY6bHCmJU9p8g7m3fVKn28H3KDYA5Pl/T8Z1ptDAVe0lXdQ2YoyyH2uyPIGHBZZIs2p"
    "DBS8R07+qN+E7Q==")
DOC_POST_BODY = (f"<xml><ToUserName><![CDATA[{DOC_CORP_ID}]]></ToUserName>"
                 f"<Encrypt><![CDATA[{DOC_POST_ENCRYPT}]]></Encrypt>"
                 f"<AgentID><![CDATA[218]]></AgentID></xml>").encode()
DOC_POST_SORTED = "13726231491409659813QDG6eK" + DOC_POST_ENCRYPT
DOC_POST_PLAINTEXT = ("<xml><ToUserName><![CDATA[wx5823bf96d3bd56c7]]></ToUserName>\n"
                      "<FromUserName><![CDATA[mycreate]]></FromUserName>\n"
                      "<CreateTime>1409659813</CreateTime>\n"
                      "<MsgType><![CDATA[text]]></MsgType>\n"
                      "<Content><![CDATA[hello]]></Content>\n"
                      "<MsgId>4561255354251345929</MsgId>\n"
                      "<AgentID>218</AgentID>\n"
                      "</xml>")

# --- WeCom's Python SDK sample: github.com/sbzhu/weworkapi_python, callback/Sample.py -----------
# Its own configuration, GET (示例一) and POST (示例二); the POST decrypts to the very message the
# same file encrypts in 示例三 (sRespData). The GET plaintext is what independent tests expect.
SDK_TOKEN = "hJqcu3uJ9Tn2gXPmxx2w9kkCkCE2EPYo"
SDK_AES_KEY = "6qkdMrq68nTKduznJYO1A37W2oEgpkMUvkttRToqhUt"
SDK_CORP_ID = "ww1436e0e65a779aee"
SDK_GET = ("012bc692d0a58dd4b10f8dfe5c4ac00ae211ebeb", "1476416373", "47744683",
           "fsi1xnbH4yQh0+PJxcOdhhK6TDXkjMyhEPA7xB2TGz6b+g7xyAbEkRxN/3cNXW9qdqjnoVzEtpbhnFyq6SVH"
           "yA==")
SDK_GET_PLAINTEXT = "1288432023552776189"
SDK_POST_SIGNATURE = "0c3914025cb4b4d68103f6bfc8db550f79dcf48e"
SDK_POST_TIMESTAMP = "1476422779"
SDK_POST_NONCE = "1597212914"
SDK_POST_BODY = (
    "<xml><ToUserName><![CDATA[ww1436e0e65a779aee]]></ToUserName>\n<Encrypt><![CDATA["
    "Kl7kjoSf6DMD1zh7rtrHjFaDapSCkaOnwu3bqLc5tAybhhMl9pFeK8NslNPVdMwmBQTNoW4mY7AIjeLvEl3NyeTkAgGz"
    "BhzTtRLNshw2AEew+kkYcD+Fq72Kt00fT0WnN87hGrW8SqGc+NcT3mu87Ha3dz1pSDi6GaUA6A0sqfde0VJPQbZ9U+3J"
    "WcoD4Z5jaU0y9GSh010wsHF8KZD24YhmZH4ch4Ka7ilEbjbfvhKkNL65HHL0J6EYJIZUC2pFrdkJ7MhmEbU2qARR4iQH"
    "E7wy24qy0cRX3Mfp6iELcDNfSsPGjUQVDGxQDCWjayJOpcwocugux082f49HKYg84EpHSGXAyh+/oxwaWbvL6aSDPOYuP"
    "DGOCI8jmnKiypE+]]></Encrypt>\n<AgentID><![CDATA[1000002]]></AgentID>\n</xml>").encode()
SDK_POST_PLAINTEXT = ("<xml><ToUserName>ww1436e0e65a779aee</ToUserName><FromUserName>ChenJiaShun"
                      "</FromUserName><CreateTime>1476422779</CreateTime><MsgType>text</MsgType>"
                      "<Content>你好</Content><MsgId>1456453720</MsgId><AgentID>1000002</AgentID>"
                      "</xml>")

# --- change_external_contact events, as WeCom's 客户联系 "变更回调" page shows them ---------------
EDIT_EVENT = ("<xml><ToUserName><![CDATA[toUser]]></ToUserName>"
              "<FromUserName><![CDATA[sys]]></FromUserName><CreateTime>1403610513</CreateTime>"
              "<MsgType><![CDATA[event]]></MsgType>"
              "<Event><![CDATA[change_external_contact]]></Event>"
              "<ChangeType><![CDATA[edit_external_contact]]></ChangeType>"
              "<UserID><![CDATA[zhangsan]]></UserID>"
              "<ExternalUserID><![CDATA[woAJ2GCAAAXtWyujaWJHDDGi0mAAAA]]></ExternalUserID>"
              "<State><![CDATA[teststate]]></State></xml>")
ADD_EVENT = ("<xml>\n    <ToUserName><![CDATA[ww1436e0e65a779aee]]></ToUserName>\n"
             "    <FromUserName><![CDATA[sys]]></FromUserName>\n"
             "    <CreateTime>1700000123</CreateTime>\n"
             "    <MsgType><![CDATA[event]]></MsgType>\n"
             "    <Event><![CDATA[change_external_contact]]></Event>\n"
             "    <ChangeType><![CDATA[add_external_contact]]></ChangeType>\n"
             "    <UserID><![CDATA[lisi]]></UserID>\n"
             "    <ExternalUserID><![CDATA[wmAJ2GCAAAchvX7ZtYw6Jxy]]></ExternalUserID>\n"
             "    <State><![CDATA[store-42]]></State>\n"
             "    <WelcomeCode><![CDATA[WELCOMECODE]]></WelcomeCode>\n</xml>")

RANDOM16 = bytes(range(16))


def doc_crypto(receive_id: str = DOC_CORP_ID) -> CallbackCrypto:
    return CallbackCrypto(DOC_TOKEN, DOC_AES_KEY, receive_id)


def raises(code: int, call, *args: object) -> CallbackError:
    with pytest.raises(CallbackError) as info:
        call(*args)
    assert info.value.code == code, info.value
    return info.value


# --- an independent implementation of the layer below, with `cryptography` and hashlib ------------

def aes_key(encoding_aes_key: str) -> bytes:
    return base64.b64decode(encoding_aes_key + "=")


def sha1_signature(*parts: str) -> str:
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()


def aes_cbc(key: bytes, data: bytes, *, decrypt: bool = False) -> bytes:
    cipher = Cipher(algorithms.AES(key), modes.CBC(key[:16]))
    ctx = cipher.decryptor() if decrypt else cipher.encryptor()
    return ctx.update(data) + ctx.finalize()


def hand_sealed(buffer: bytes, key: bytes = aes_key(DOC_AES_KEY)) -> str:
    """`buffer` (already laid out and padded, any way the test wants) AES-encrypted and base64ed."""
    return base64.b64encode(aes_cbc(key, buffer)).decode()


def layout(message: bytes, receive_id: bytes, random16: bytes = RANDOM16) -> bytes:
    return random16 + struct.pack(">I", len(message)) + message + receive_id


def pkcs7_32(data: bytes) -> bytes:
    pad = 32 - len(data) % 32
    return data + bytes([pad]) * pad


def envelope(encrypted: str) -> bytes:
    return (f"<xml><ToUserName><![CDATA[{DOC_CORP_ID}]]></ToUserName>"
            f"<AgentID><![CDATA[1000002]]></AgentID>"
            f"<Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>").encode()


def post_signed(encrypted: str, crypto: CallbackCrypto | None = None) -> str:
    """Decrypt a body around `encrypted`, correctly signed, so that only the payload is at fault."""
    crypto = crypto or doc_crypto()
    signature = sha1_signature(DOC_TOKEN, "1700000000", "42", encrypted)
    return crypto.decrypt(signature, "1700000000", "42", envelope(encrypted))


def reply_fields(reply: bytes) -> dict[str, str]:
    root = ET.fromstring(reply)
    assert root.tag == "xml"
    return {child.tag: child.text or "" for child in root}


# --- WeCom's sample vectors -------------------------------------------------------------------


def test_signature_matches_the_documented_example() -> None:
    crypto = doc_crypto()
    assert "".join(sorted([DOC_TOKEN, DOC_POST_TIMESTAMP, DOC_POST_NONCE, DOC_POST_ENCRYPT])) \
        == DOC_POST_SORTED
    assert crypto.signature(DOC_POST_TIMESTAMP, DOC_POST_NONCE, DOC_POST_ENCRYPT) \
        == DOC_POST_SIGNATURE
    assert crypto.signature(DOC_GET_TIMESTAMP, DOC_GET_NONCE, DOC_GET_ECHOSTR) == DOC_GET_SIGNATURE


def test_verify_url_answers_the_documented_echostr_plaintext() -> None:
    assert doc_crypto().verify_url(DOC_GET_SIGNATURE, DOC_GET_TIMESTAMP, DOC_GET_NONCE,
                                   DOC_GET_ECHOSTR) == DOC_GET_PLAINTEXT


def test_decrypt_yields_the_documented_message() -> None:
    plaintext = doc_crypto().decrypt(DOC_POST_SIGNATURE, DOC_POST_TIMESTAMP, DOC_POST_NONCE,
                                     DOC_POST_BODY)
    assert plaintext == DOC_POST_PLAINTEXT


def test_the_python_sdk_sample_verifies_and_decrypts() -> None:
    crypto = CallbackCrypto(SDK_TOKEN, SDK_AES_KEY, SDK_CORP_ID)
    assert crypto.verify_url(*SDK_GET) == SDK_GET_PLAINTEXT
    assert crypto.decrypt(SDK_POST_SIGNATURE, SDK_POST_TIMESTAMP, SDK_POST_NONCE,
                          SDK_POST_BODY) == SDK_POST_PLAINTEXT


def test_encrypt_reproduces_the_documented_ciphertext_given_its_random_bytes() -> None:
    # The example's 16 random bytes, read with an independent AES decryption; with them, encrypt
    # must produce WeCom's ciphertext and signature byte for byte (IV, byte order, 32-byte pad).
    random16 = aes_cbc(aes_key(DOC_AES_KEY), base64.b64decode(DOC_POST_ENCRYPT), decrypt=True)[:16]
    reply = doc_crypto().encrypt(DOC_POST_PLAINTEXT, DOC_POST_NONCE, DOC_POST_TIMESTAMP,
                                 random16=random16)
    assert reply_fields(reply) == {"Encrypt": DOC_POST_ENCRYPT, "MsgSignature": DOC_POST_SIGNATURE,
                                   "TimeStamp": DOC_POST_TIMESTAMP, "Nonce": DOC_POST_NONCE}
    assert reply.startswith(b"<xml><Encrypt><![CDATA[")


# --- encrypt, checked from outside ------------------------------------------------------------


def test_encrypt_lays_out_and_pads_as_documented() -> None:
    message = "<xml><Content><![CDATA[你好, 会员]]></Content></xml>"
    reply = doc_crypto().encrypt(message, "nonce7", "1700000000", random16=RANDOM16)
    fields = reply_fields(reply)
    assert fields["MsgSignature"] == sha1_signature(DOC_TOKEN, "1700000000", "nonce7",
                                                    fields["Encrypt"])
    raw = aes_cbc(aes_key(DOC_AES_KEY), base64.b64decode(fields["Encrypt"]), decrypt=True)
    assert len(raw) % 32 == 0
    pad = raw[-1]
    assert 1 <= pad <= 32 and raw[-pad:] == bytes([pad]) * pad
    assert raw[:-pad] == layout(message.encode(), DOC_CORP_ID.encode())


def test_padding_is_a_full_32_byte_block_when_the_data_is_already_aligned() -> None:
    message = "x" * (64 - 20 - len(DOC_CORP_ID))  # random + length + message + corp id = 64
    fields = reply_fields(doc_crypto().encrypt(message, "1", "1", random16=RANDOM16))
    raw = aes_cbc(aes_key(DOC_AES_KEY), base64.b64decode(fields["Encrypt"]), decrypt=True)
    assert len(raw) == 96 and raw[-32:] == bytes([32]) * 32


def test_encrypt_draws_fresh_random_bytes_by_default() -> None:
    crypto = doc_crypto()
    first = reply_fields(crypto.encrypt("same", "1", "1"))["Encrypt"]
    second = reply_fields(crypto.encrypt("same", "1", "1"))["Encrypt"]
    assert first != second


def test_round_trip_through_decrypt_and_verify_url() -> None:
    crypto = doc_crypto()
    message = ADD_EVENT + "\u00e9\U0001f600"
    reply = crypto.encrypt(message, "8899", "1700000001")
    fields = reply_fields(reply)
    assert crypto.decrypt(fields["MsgSignature"], fields["TimeStamp"], fields["Nonce"],
                          envelope(fields["Encrypt"])) == message
    assert crypto.decrypt(fields["MsgSignature"], "1700000001", "8899", reply) == message
    echo = reply_fields(crypto.encrypt("4242424242", "5", "1700000002"))
    assert crypto.verify_url(echo["MsgSignature"], "1700000002", "5", echo["Encrypt"]) \
        == "4242424242"


@pytest.mark.parametrize("nonce, timestamp", [("a]]>b", "1"), ("", "1"), ("n", "12a"),
                                              ("n", "")])
def test_encrypt_refuses_what_cannot_sit_verbatim_in_the_reply(nonce: str, timestamp: str) -> None:
    raises(-40011, doc_crypto().encrypt, "m", nonce, timestamp)


def test_encrypt_refuses_a_random_prefix_of_the_wrong_size() -> None:
    raises(-40006, doc_crypto().encrypt, "m", "1", "1", b"short")


# --- refusals ---------------------------------------------------------------------------------


def test_a_tampered_signature_is_refused() -> None:
    crypto = doc_crypto()
    bad = DOC_POST_SIGNATURE[:-1] + ("0" if DOC_POST_SIGNATURE[-1] != "0" else "1")
    raises(-40001, crypto.decrypt, bad, DOC_POST_TIMESTAMP, DOC_POST_NONCE, DOC_POST_BODY)
    raises(-40001, crypto.decrypt, DOC_POST_SIGNATURE.upper(), DOC_POST_TIMESTAMP, DOC_POST_NONCE,
           DOC_POST_BODY)
    raises(-40001, crypto.decrypt, DOC_POST_SIGNATURE, "1409659814", DOC_POST_NONCE, DOC_POST_BODY)
    raises(-40001, crypto.verify_url, DOC_GET_SIGNATURE, DOC_GET_TIMESTAMP, "263014781",
           DOC_GET_ECHOSTR)
    raises(-40001, crypto.verify_url, "签名", DOC_GET_TIMESTAMP, DOC_GET_NONCE, DOC_GET_ECHOSTR)
    raises(-40001, CallbackCrypto("QDG6eL", DOC_AES_KEY, DOC_CORP_ID).decrypt, DOC_POST_SIGNATURE,
           DOC_POST_TIMESTAMP, DOC_POST_NONCE, DOC_POST_BODY)


def test_a_tampered_ciphertext_is_refused_by_the_signature() -> None:
    flipped = ("S" if DOC_POST_ENCRYPT[0] != "S" else "T") + DOC_POST_ENCRYPT[1:]
    body = DOC_POST_BODY.replace(DOC_POST_ENCRYPT.encode(), flipped.encode())
    assert body != DOC_POST_BODY
    raises(-40001, doc_crypto().decrypt, DOC_POST_SIGNATURE, DOC_POST_TIMESTAMP, DOC_POST_NONCE,
           body)


def test_a_tampered_ciphertext_that_is_re_signed_is_refused_by_the_padding_check() -> None:
    # In CBC, flipping a bit of the second-to-last ciphertext block flips the same bit of the last
    # plaintext block: here the pad byte (30 in this message) becomes 31, which PKCS#7 rejects.
    ciphertext = bytearray(base64.b64decode(DOC_POST_ENCRYPT))
    assert aes_cbc(aes_key(DOC_AES_KEY), bytes(ciphertext), decrypt=True)[-1] == 30
    ciphertext[-17] ^= 0x01
    error = raises(-40008, post_signed, base64.b64encode(bytes(ciphertext)).decode())
    assert "padding" in str(error)


def test_a_message_for_another_receive_id_is_refused() -> None:
    raises(-40005, doc_crypto("wx5823bf96d3bd56c8").decrypt, DOC_POST_SIGNATURE,
           DOC_POST_TIMESTAMP, DOC_POST_NONCE, DOC_POST_BODY)
    raises(-40005, doc_crypto("wx5823bf96d3bd56c").verify_url, DOC_GET_SIGNATURE,
           DOC_GET_TIMESTAMP, DOC_GET_NONCE, DOC_GET_ECHOSTR)
    other = hand_sealed(pkcs7_32(layout(b"<xml/>", b"ww0000000000000000")))
    raises(-40005, post_signed, other)
    assert post_signed(hand_sealed(pkcs7_32(layout(b"<xml/>", DOC_CORP_ID.encode())))) == "<xml/>"


@pytest.mark.parametrize("tail", [
    bytes([4, 4, 4, 5]),            # pad byte 5, but the bytes before it are not all 5
    bytes([7, 7, 7, 0]),            # pad byte 0
    bytes([33]) * 33,               # consistent, but above WeCom's block of 32
])
def test_bad_padding_is_refused(tail: bytes) -> None:
    data = layout(b"<xml/>", DOC_CORP_ID.encode())
    data += b"\x00" * (-(len(data) + len(tail)) % 32) + tail
    assert len(data) % 32 == 0
    error = raises(-40008, post_signed, hand_sealed(data))
    assert "padding" in str(error)


def test_a_message_length_beyond_the_data_is_refused() -> None:
    data = RANDOM16 + struct.pack(">I", 1000) + b"<xml/>" + DOC_CORP_ID.encode()
    error = raises(-40008, post_signed, hand_sealed(pkcs7_32(data)))
    assert "length 1000" in str(error)
    raises(-40008, post_signed, hand_sealed(pkcs7_32(RANDOM16[:10])))


def test_ciphertext_that_is_not_base64_or_not_whole_blocks_is_refused() -> None:
    raises(-40010, post_signed, "not*base64")
    raises(-40007, post_signed, base64.b64encode(b"\x01" * 20).decode())


def test_an_oversize_body_is_refused_before_parsing() -> None:
    crypto = doc_crypto()
    fields = reply_fields(crypto.encrypt("<xml/>", "1", "1"))
    body = envelope(fields["Encrypt"])
    filler = MAX_XML_BYTES - len(body)
    at_limit = body.replace(b"</xml>", b" " * filler + b"</xml>")
    assert len(at_limit) == MAX_XML_BYTES == 64 * 1024
    assert crypto.decrypt(fields["MsgSignature"], "1", "1", at_limit) == "<xml/>"
    over = body.replace(b"</xml>", b" " * (filler + 1) + b"</xml>")
    error = raises(-40002, crypto.decrypt, fields["MsgSignature"], "1", "1", over)
    assert "limit" in str(error)
    # Not even well-formed: refused for its size all the same.
    raises(-40002, crypto.decrypt, "x", "1", "1", b"<" * (MAX_XML_BYTES + 1))


@pytest.mark.parametrize("prolog", [
    '<!DOCTYPE xml [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>',
    '<?xml version="1.0"?>\n<!doctype xml SYSTEM "file:///etc/passwd">',
])
def test_a_doctype_is_refused(prolog: str) -> None:
    fields = reply_fields(doc_crypto().encrypt("<xml/>", "1", "1"))
    body = prolog.encode() + envelope(fields["Encrypt"])
    error = raises(-40002, doc_crypto().decrypt, fields["MsgSignature"], "1", "1", body)
    assert "DOCTYPE" in str(error)
    with pytest.raises(CallbackError) as info:
        parse_contact_change(prolog + EDIT_EVENT)
    assert info.value.code == -40002


@pytest.mark.parametrize("body", [
    b"<xml><Encrypt>abc</Encrypt>",                                # not well-formed
    b"<xml><ToUserName>x</ToUserName></xml>",                      # no Encrypt
    b"<xml><Encrypt></Encrypt></xml>",                             # empty Encrypt
    b"<xml><Encrypt>a</Encrypt><Encrypt>b</Encrypt></xml>",       # two of them
    b"<root><Encrypt>abc</Encrypt></root>",                        # not WeCom's root
    b"<xml><Encrypt>\xff\xfe</Encrypt></xml>",                     # not UTF-8
])
def test_a_body_that_is_not_the_documented_envelope_is_refused(body: bytes) -> None:
    raises(-40002, doc_crypto().decrypt, DOC_POST_SIGNATURE, DOC_POST_TIMESTAMP, DOC_POST_NONCE,
           body)


@pytest.mark.parametrize("key, says", [
    (DOC_AES_KEY[:-1], "must be 43 characters, not 42"),
    (DOC_AES_KEY + "A", "must be 43 characters, not 44"),
    (DOC_AES_KEY[:-1] + "*", "not valid base64"),
])
def test_an_encoding_aes_key_of_the_wrong_form_is_refused(key: str, says: str) -> None:
    error = raises(-40004, CallbackCrypto, DOC_TOKEN, key, DOC_CORP_ID)
    assert isinstance(error, ValueError)
    assert "EncodingAESKey" in str(error) and says in str(error) and key not in str(error)


def test_configuration_stays_out_of_repr_and_errors() -> None:
    crypto = doc_crypto()
    assert DOC_TOKEN not in repr(crypto) and DOC_AES_KEY not in repr(crypto)
    error = raises(-40001, crypto.decrypt, "0" * 40, DOC_POST_TIMESTAMP, DOC_POST_NONCE,
                   DOC_POST_BODY)
    assert DOC_TOKEN not in str(error) and "hello" not in str(error)


# --- parse_contact_change ---------------------------------------------------------------------


def test_an_edit_external_contact_event_is_read() -> None:
    change = parse_contact_change(EDIT_EVENT)
    assert change == ContactChange(change_type="edit_external_contact", userid="zhangsan",
                                   external_userid="woAJ2GCAAAXtWyujaWJHDDGi0mAAAA",
                                   corp_id="toUser", create_time=1403610513)
    assert isinstance(change.create_time, int)
    with pytest.raises(AttributeError):
        change.userid = "someone else"  # type: ignore[misc]


def test_an_add_external_contact_event_is_read_after_a_round_trip() -> None:
    crypto = CallbackCrypto(SDK_TOKEN, SDK_AES_KEY, SDK_CORP_ID)
    fields = reply_fields(crypto.encrypt(ADD_EVENT, "777", "1700000123"))
    plaintext = crypto.decrypt(fields["MsgSignature"], "1700000123", "777",
                               envelope(fields["Encrypt"]))
    assert parse_contact_change(plaintext) == ContactChange(
        change_type="add_external_contact", userid="lisi",
        external_userid="wmAJ2GCAAAchvX7ZtYw6Jxy", corp_id="ww1436e0e65a779aee",
        create_time=1700000123)
    assert msgspec.json.decode(msgspec.json.encode(parse_contact_change(plaintext)),
                               type=ContactChange).userid == "lisi"


@pytest.mark.parametrize("plaintext", [
    DOC_POST_PLAINTEXT,                                                      # a text message
    EDIT_EVENT.replace("change_external_contact", "change_contact"),         # another event
    EDIT_EVENT.replace("[CDATA[event]]", "[CDATA[text]]"),                   # not an event
])
def test_anything_else_is_not_a_contact_change(plaintext: str) -> None:
    assert plaintext != EDIT_EVENT
    assert parse_contact_change(plaintext) is None


@pytest.mark.parametrize("broken", [
    EDIT_EVENT.replace("<ExternalUserID><![CDATA[woAJ2GCAAAXtWyujaWJHDDGi0mAAAA]]>"
                       "</ExternalUserID>", ""),
    EDIT_EVENT.replace("<UserID><![CDATA[zhangsan]]></UserID>", "<UserID></UserID>"),
    EDIT_EVENT.replace("<ChangeType><![CDATA[edit_external_contact]]></ChangeType>", ""),
    EDIT_EVENT.replace("<ToUserName><![CDATA[toUser]]></ToUserName>", ""),
    EDIT_EVENT.replace("1403610513", "yesterday"),
    EDIT_EVENT[:-6],
])
def test_a_contact_change_with_a_missing_or_bad_field_is_refused(broken: str) -> None:
    assert broken != EDIT_EVENT
    with pytest.raises(CallbackError) as info:
        parse_contact_change(broken)
    assert info.value.code == -40002
