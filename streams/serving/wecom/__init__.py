"""WeCom (企业微信) customer-tag sync: the HTTP client (`client`) and the sync logic (`sync`)."""
