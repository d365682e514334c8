"""WeCom (企业微信) callback message security: the WXBizMsgCrypt scheme, exactly as documented.

WeCom documents the scheme on its page "加解密方案说明" (回调配置 → 接收消息与事件) and ships it as
the WXBizMsgCrypt SDK; this module follows both:

- `msg_signature` = SHA1 hex of the lexicographically sorted concatenation of the token, the
  `timestamp`, the `nonce` and the encrypted text (the `echostr` of the GET that verifies the URL,
  the `<Encrypt>` of a POSTed message);
- AESKey = base64decode(EncodingAESKey + "="), 32 bytes; the cipher is AES-256-CBC with
  IV = AESKey[:16] and PKCS#7 padding to a multiple of 32 bytes (not AES's 16);
- the plaintext is 16 random bytes + the message length as 4 bytes big-endian + the message
  (UTF-8) + the ReceiveId, which for a self-built (企业内部开发) app's callback is the corp id;
- every failure carries the SDK's error code (its `ierror`: -40001 … -40011).

There is no MAC: the signature, made with the token both sides share, is what authenticates a
message. Decryption therefore checks the signature first and then everything the layout lets it
check (the padding, the length, the trailing ReceiveId) so that a message for another corp or a
damaged one is refused rather than half-read.

XML comes from the network, so it is read with the stdlib parser under two guards: at most
`MAX_XML_BYTES`, and no DOCTYPE (no entity can then be declared, so none can expand). Text is
parsed as a `str`, which makes expat read it as UTF-8 whatever the XML declaration claims.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import struct
import xml.etree.ElementTree as ET

import msgspec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from schemas.errors import TagstreamError

# WeCom's error codes, as the WXBizMsgCrypt SDK (ierror) defines them.
VALIDATE_SIGNATURE_ERROR = -40001
PARSE_XML_ERROR = -40002
COMPUTE_SIGNATURE_ERROR = -40003
ILLEGAL_AES_KEY = -40004
VALIDATE_RECEIVE_ID_ERROR = -40005
ENCRYPT_AES_ERROR = -40006
DECRYPT_AES_ERROR = -40007
ILLEGAL_BUFFER = -40008
ENCODE_BASE64_ERROR = -40009
DECODE_BASE64_ERROR = -40010
GEN_RETURN_XML_ERROR = -40011

MAX_XML_BYTES = 64 * 1024
"""The largest XML body (or decrypted message) read; WeCom's callbacks are a few hundred bytes."""

PAD_BLOCK = 32
"""WeCom pads to 32-byte blocks (PKCS#7 with k = 32), so a pad byte is 1..32.

Encryption always pads to a multiple of 32; decryption accepts any whole number of AES blocks
and checks that every pad byte equals the pad length, as PKCS#7 requires."""

_AES_BLOCK = 16
_RANDOM_LEN = 16
_LENGTH_LEN = 4
_CONTACT_EVENT = "change_external_contact"
_REPLY_TOKEN = re.compile(r"[0-9A-Za-z]{1,64}")


class CallbackError(TagstreamError, ValueError):
    """A callback that must be refused (or a key that cannot be used), with WeCom's error code.

    `code` is one of the SDK's codes above; the message says what was wrong in English and never
    includes the token, the key or a decrypted message.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"WeCom callback error {code}: {message}")
        self.code = code
        self.message = message


class ContactChange(msgspec.Struct, frozen=True):
    """A `change_external_contact` event: member `userid` and customer `external_userid` changed.

    `change_type` is WeCom's ChangeType (add_external_contact, edit_external_contact,
    del_external_contact, ...), `corp_id` its ToUserName, `create_time` its CreateTime (epoch s).
    """

    change_type: str
    userid: str
    external_userid: str
    corp_id: str
    create_time: int


class CallbackCrypto:
    """Signs, verifies, encrypts and decrypts one app's callbacks (one token, key, ReceiveId).

    Holds no state beyond its configuration, so one instance serves any number of requests.
    """

    def __init__(self, token: str, encoding_aes_key: str, receive_id: str) -> None:
        if not token:
            raise CallbackError(COMPUTE_SIGNATURE_ERROR, "token must not be empty")
        if not receive_id:
            raise CallbackError(VALIDATE_RECEIVE_ID_ERROR,
                                "receive_id (the corp id) must not be empty")
        self._token = token
        self._key = _aes_key(encoding_aes_key)
        self._receive_id = receive_id.encode("utf-8")

    def __repr__(self) -> str:
        return f"CallbackCrypto(receive_id={self._receive_id.decode('utf-8')!r})"

    def signature(self, timestamp: str, nonce: str, encrypted: str) -> str:
        """SHA1 hex of the sorted concatenation of token, timestamp, nonce and encrypted."""
        parts = sorted((self._token, timestamp, nonce, encrypted))
        try:
            data = "".join(parts).encode("utf-8")
        except UnicodeEncodeError:
            raise CallbackError(COMPUTE_SIGNATURE_ERROR,
                                "timestamp, nonce or encrypted text is not encodable") from None
        return hashlib.sha1(data).hexdigest()

    def verify_url(self, msg_signature: str, timestamp: str, nonce: str, echostr: str) -> str:
        """The plaintext of a URL-verification GET's `echostr`: what the handler must answer.

        `echostr` is the URL-decoded query value. Raises `CallbackError` unless the signature
        matches and the echostr decrypts to a well-formed message for our ReceiveId.
        """
        self._check_signature(msg_signature, timestamp, nonce, echostr)
        return self._open(echostr)

    def decrypt(self, msg_signature: str, timestamp: str, nonce: str, body: bytes) -> str:
        """The inner plaintext XML of a callback POST whose `body` is WeCom's envelope.

        The envelope is `<xml><ToUserName/><AgentID/><Encrypt/></xml>`; the signature is checked
        over its `<Encrypt>` before anything is decrypted.
        """
        root = _parse_xml(body)
        encrypted = _one_text(root, "Encrypt", strip=False)
        self._check_signature(msg_signature, timestamp, nonce, encrypted)
        return self._open(encrypted)

    def encrypt(self, plaintext: str, nonce: str, timestamp: str,
                random16: bytes | None = None) -> bytes:
        """The documented encrypted envelope of `plaintext`, UTF-8 encoded.

        `<xml><Encrypt/><MsgSignature/><TimeStamp/><Nonce/></xml>`: the passive reply to a
        callback, and what a fake WeCom sends (its Encrypt and MsgSignature also serve as the
        `echostr` and `msg_signature` of a verification GET). `timestamp` must be decimal digits
        and `nonce` ASCII letters and digits (WeCom's own are digits), so both sit in the XML
        verbatim. `random16` fixes the 16 random bytes for reproducible output; by default they
        come from `secrets`.
        """
        if not timestamp.isascii() or not timestamp.isdigit():
            raise CallbackError(GEN_RETURN_XML_ERROR, "timestamp must be decimal digits")
        if not _REPLY_TOKEN.fullmatch(nonce):
            raise CallbackError(GEN_RETURN_XML_ERROR,
                                "nonce must be 1 to 64 ASCII letters or digits")
        encrypted = self._seal(plaintext, random16)
        signature = self.signature(timestamp, nonce, encrypted)
        return (f"<xml><Encrypt><![CDATA[{encrypted}]]></Encrypt>"
                f"<MsgSignature><![CDATA[{signature}]]></MsgSignature>"
                f"<TimeStamp>{timestamp}</TimeStamp>"
                f"<Nonce><![CDATA[{nonce}]]></Nonce></xml>").encode("utf-8")

    def _check_signature(self, msg_signature: str, timestamp: str, nonce: str,
                         encrypted: str) -> None:
        expected = self.signature(timestamp, nonce, encrypted).encode("ascii")
        if not (msg_signature.isascii()
                and hmac.compare_digest(expected, msg_signature.encode("ascii"))):
            raise CallbackError(VALIDATE_SIGNATURE_ERROR,
                                "msg_signature does not match the token, timestamp, nonce and "
                                "encrypted text")

    def _cipher(self) -> Cipher[modes.CBC]:
        return Cipher(algorithms.AES(self._key), modes.CBC(self._key[:16]))

    def _seal(self, plaintext: str, random16: bytes | None) -> str:
        """base64(AES-CBC(random16 + len + msg + receive_id + PKCS#7/32 padding))."""
        if random16 is None:
            random16 = secrets.token_bytes(_RANDOM_LEN)
        if len(random16) != _RANDOM_LEN:
            raise CallbackError(ENCRYPT_AES_ERROR,
                                f"random16 must be {_RANDOM_LEN} bytes, not {len(random16)}")
        try:
            message = plaintext.encode("utf-8")
        except UnicodeEncodeError:
            raise CallbackError(ENCRYPT_AES_ERROR,
                                "the plaintext is not encodable as UTF-8") from None
        data = random16 + struct.pack(">I", len(message)) + message + self._receive_id
        pad = PAD_BLOCK - len(data) % PAD_BLOCK
        data += bytes((pad,)) * pad
        encryptor = self._cipher().encryptor()
        return base64.b64encode(encryptor.update(data) + encryptor.finalize()).decode("ascii")

    def _open(self, encrypted: str) -> str:
        """The message inside `encrypted`, after checking padding, length and ReceiveId."""
        try:
            ciphertext = base64.b64decode(encrypted, validate=True)
        except (binascii.Error, ValueError):
            raise CallbackError(DECODE_BASE64_ERROR,
                                "the encrypted text is not valid base64") from None
        if not ciphertext or len(ciphertext) % _AES_BLOCK:
            raise CallbackError(DECRYPT_AES_ERROR,
                                f"the ciphertext is {len(ciphertext)} bytes, not a positive "
                                f"multiple of the AES block ({_AES_BLOCK})")
        decryptor = self._cipher().decryptor()
        data = decryptor.update(ciphertext) + decryptor.finalize()

        pad = data[-1]
        if not 1 <= pad <= PAD_BLOCK or data[-pad:] != bytes((pad,)) * pad:
            raise CallbackError(ILLEGAL_BUFFER, "the decrypted data has invalid PKCS#7 padding")
        data = data[:-pad]
        header = _RANDOM_LEN + _LENGTH_LEN
        if len(data) < header:
            raise CallbackError(ILLEGAL_BUFFER, "the decrypted data is shorter than its header")
        (length,) = struct.unpack(">I", data[_RANDOM_LEN:header])
        if length > len(data) - header:
            raise CallbackError(ILLEGAL_BUFFER,
                                f"the decrypted message length {length} exceeds the "
                                f"{len(data) - header} bytes present")
        message, receive_id = data[header:header + length], data[header + length:]
        if not hmac.compare_digest(receive_id, self._receive_id):
            raise CallbackError(VALIDATE_RECEIVE_ID_ERROR,
                                "the message is addressed to another receive id (corp id)")
        try:
            return message.decode("utf-8")
        except UnicodeDecodeError:
            raise CallbackError(ILLEGAL_BUFFER,
                                "the decrypted message is not valid UTF-8") from None


def parse_contact_change(plaintext_xml: str) -> ContactChange | None:
    """The `change_external_contact` event in a decrypted callback, or None for anything else.

    Other events and ordinary messages are not errors: a callback URL receives everything the app
    subscribes to. An external-contact event without ChangeType, UserID, ExternalUserID,
    ToUserName or an integer CreateTime raises `CallbackError` (-40002).
    """
    root = _parse_xml(plaintext_xml)
    if (_optional_text(root, "MsgType") != "event"
            or _optional_text(root, "Event") != _CONTACT_EVENT):
        return None
    create_time = _one_text(root, "CreateTime")
    if not create_time.isascii() or not create_time.isdigit():
        raise CallbackError(PARSE_XML_ERROR,
                            f"CreateTime must be an integer, not {create_time[:32]!r}")
    return ContactChange(change_type=_one_text(root, "ChangeType"),
                         userid=_one_text(root, "UserID"),
                         external_userid=_one_text(root, "ExternalUserID"),
                         corp_id=_one_text(root, "ToUserName"),
                         create_time=int(create_time))


def _aes_key(encoding_aes_key: str) -> bytes:
    """AESKey = base64decode(EncodingAESKey + "="): 43 base64 characters give 32 bytes."""
    if len(encoding_aes_key) != 43:
        raise CallbackError(ILLEGAL_AES_KEY,
                            f"EncodingAESKey must be 43 characters, not {len(encoding_aes_key)}")
    try:
        key = base64.b64decode(encoding_aes_key + "=", validate=True)
    except (binascii.Error, ValueError):
        raise CallbackError(ILLEGAL_AES_KEY,
                            "EncodingAESKey is not valid base64") from None
    if len(key) != 32:
        raise CallbackError(ILLEGAL_AES_KEY,
                            f"EncodingAESKey decodes to {len(key)} bytes, not 32")
    return key


def _parse_xml(data: bytes | str) -> ET.Element:
    """The root `<xml>` element of `data`, refusing oversize input and any DOCTYPE first."""
    size = len(data) if isinstance(data, bytes) else len(data.encode("utf-8"))
    if size > MAX_XML_BYTES:
        raise CallbackError(PARSE_XML_ERROR,
                            f"the XML is {size} bytes, over the {MAX_XML_BYTES}-byte limit")
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise CallbackError(PARSE_XML_ERROR, "the XML is not valid UTF-8") from None
    if "<!doctype" in data.lower():
        raise CallbackError(PARSE_XML_ERROR, "the XML declares a DOCTYPE, which is not allowed")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise CallbackError(PARSE_XML_ERROR, f"the XML is malformed: {exc}") from None
    if root.tag != "xml":
        raise CallbackError(PARSE_XML_ERROR, f"the root element is <{root.tag}>, not <xml>")
    return root


def _optional_text(root: ET.Element, tag: str) -> str | None:
    element = root.find(tag)
    return None if element is None else (element.text or "").strip()


def _one_text(root: ET.Element, tag: str, *, strip: bool = True) -> str:
    """The non-empty text of the only `<tag>` child of `root` (two would be ambiguous).

    `strip=False` keeps the text exactly as sent, as the signature over `<Encrypt>` needs.
    """
    elements = root.findall(tag)
    if len(elements) != 1:
        raise CallbackError(PARSE_XML_ERROR,
                            f"expected exactly one <{tag}>, found {len(elements)}")
    text = elements[0].text or ""
    if not text.strip():
        raise CallbackError(PARSE_XML_ERROR, f"<{tag}> is empty")
    return text.strip() if strip else text
