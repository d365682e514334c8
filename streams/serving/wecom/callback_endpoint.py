"""The WeCom callback URL (/wecom/callback of `tagstream api`): WeCom's URL verification
(GET with an encrypted echostr) and its encrypted event pushes (POST), checked and opened
with the Token and EncodingAESKey of the admin console (callback_crypto.py), then handed to
the CallbackReceiver. HTTP only here; what a change means is in callback.py."""

from __future__ import annotations

import logging
from typing import Any, Mapping

from streams.platform.settings import Settings, SettingsError
from streams.serving.wecom.callback import CallbackReceiver, RedisSeenTags
from streams.serving.wecom.callback_crypto import (VALIDATE_SIGNATURE_ERROR, CallbackCrypto,
                                                   CallbackError, parse_contact_change)

log = logging.getLogger(__name__)

# WeCom waits 5 s for an answer, then retries (three times): "success" acknowledges.
ACK = "success"
QUERY = ("msg_signature", "timestamp", "nonce")


class WecomCallback:
    """Verification and events; `start()`/`stop()` open and close the WeCom client."""

    def __init__(self, crypto: CallbackCrypto, receiver: CallbackReceiver, client: Any) -> None:
        self.crypto, self.receiver, self.client = crypto, receiver, client

    async def start(self) -> None:
        await self.client.start()

    async def stop(self) -> None:
        await self.client.stop()

    async def handle(self, method: str, query: Mapping[str, str],
                     body: bytes) -> tuple[int, str]:
        """(HTTP status, plain-text body) for one request."""
        missing = [name for name in QUERY if not query.get(name)]
        if missing:
            return 400, f"missing query parameters: {', '.join(missing)}"
        signature, timestamp, nonce = (query[name] for name in QUERY)
        try:
            if method == "GET":
                echostr = query.get("echostr")
                if not echostr:
                    return 400, "missing query parameter: echostr"
                return 200, self.crypto.verify_url(signature, timestamp, nonce, echostr)
            change = parse_contact_change(self.crypto.decrypt(signature, timestamp, nonce,
                                                              body))
        except CallbackError as exc:
            log.warning("wecom callback refused: %s", exc)
            return (403 if exc.code == VALIDATE_SIGNATURE_ERROR else 400), str(exc)
        if change is None:
            return 200, ACK
        try:
            written = await self.receiver.receive(change)
        except Exception:
            # Nothing acknowledged: WeCom sends the callback again; its event ids repeat.
            log.exception("wecom callback: %s of %s/%s not processed; WeCom will retry",
                          change.change_type, change.userid, change.external_userid)
            return 503, "not processed; retry"
        if written:
            log.info("wecom callback: %d tag marks from %s on %s", written, change.userid,
                     change.external_userid)
        return 200, ACK


def callback_from_settings(settings: Settings, pack: Any, profiles: Any,
                           events: Any) -> WecomCallback | None:
    """The callback, or None when its Token and EncodingAESKey are not set."""
    if not settings.wecom_callback_token and not settings.wecom_callback_aes_key:
        return None
    if not settings.wecom_callback_token or not settings.wecom_callback_aes_key:
        raise SettingsError("the WeCom callback needs both TAGSTREAM_WECOM_CALLBACK_TOKEN and "
                            "TAGSTREAM_WECOM_CALLBACK_AES_KEY")
    from streams.serving.wecom.consumer import client_from_settings

    client = client_from_settings(settings)
    try:
        crypto = CallbackCrypto(settings.wecom_callback_token, settings.wecom_callback_aes_key,
                                settings.wecom_corp_id)
    except CallbackError as exc:
        raise SettingsError(f"TAGSTREAM_WECOM_CALLBACK_AES_KEY: {exc}") from None
    marked_by_name = {tag.name_zh: tag.id for tag in pack.marked.values()}
    return WecomCallback(crypto, CallbackReceiver(client, profiles, events, marked_by_name,
                                                  RedisSeenTags(profiles)), client)
