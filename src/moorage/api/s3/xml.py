"""S3's XML: the documents the S3 API answers with, and the two it reads (Delete, CompleteMultipartUpload).

Written by hand with escaping rather than through an XML library: the answers are a few fixed
shapes, and string building keeps a 1,000-key listing cheap. Reading goes through ElementTree,
after refusing any DOCTYPE (no entity tricks reach the parser).
"""

from __future__ import annotations

import email.utils
import re
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable
from urllib.parse import quote
from xml.sax.saxutils import escape

from moorage.store.objects import ObjectStoreError

NAMESPACE = "http://s3.amazonaws.com/doc/2006-03-01/"
XML = b"application/xml"


# Characters XML 1.0 cannot carry at all, not even as references: shown as \xNN (a key holding one is
# listed faithfully only with encoding-type=url, as on S3).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def text(value: object) -> str:
    return escape(_NOT_XML.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value)))


def element(name: str, value: object) -> str:
    return f"<{name}>{text(value)}</{name}>"


def document(root: str, inner: str | Iterable[str]) -> bytes:
    body = inner if isinstance(inner, str) else "".join(inner)
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<{root} xmlns="{NAMESPACE}">{body}</{root}>'.encode()


def error_document(code: str, message: str, resource: str, request_id: str, fields: dict[str, object]) -> bytes:
    extra = "".join(element(k, v) for k, v in fields.items())
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error>{element("Code", code)}{element("Message", message)}'
            f'{extra}{element("Resource", resource)}{element("RequestId", request_id)}</Error>').encode()


def iso_time(epoch: float) -> str:
    """S3's timestamps in XML: ISO 8601, UTC, milliseconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch * 1000) % 1000:03d}Z"


def http_date(epoch: float) -> str:
    return email.utils.formatdate(epoch, usegmt=True)


def url_encoded(value: str, encode: bool) -> str:
    """A key or prefix as a listing with ``encoding-type=url`` writes it (botocore decodes it back)."""
    return quote(value, safe="/~") if encode else value


def parse(body: bytes, root: str) -> ElementTree.Element:
    """The document, whose root must be ``root``; MalformedXML otherwise."""
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise malformed("DOCTYPE and entity declarations are not accepted.")
    try:
        tree = ElementTree.fromstring(body)
    except ElementTree.ParseError as exc:
        raise malformed(str(exc)) from None
    for node in tree.iter():
        if isinstance(node.tag, str) and "}" in node.tag:
            node.tag = node.tag.split("}", 1)[1]
    if tree.tag != root:
        raise malformed(f"the document's root is <{tree.tag}>, not <{root}>.")
    return tree


def malformed(detail: str) -> ObjectStoreError:
    return ObjectStoreError("MalformedXML", "The XML you provided was not well-formed or did not validate against our "
                            f"published schema: {detail}")
