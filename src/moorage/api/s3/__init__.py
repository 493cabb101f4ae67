"""An S3-compatible object API on moorage's port, over the object store (``store/objects.py``).

``door.py`` dispatches requests signed for ``s3``; ``request.py`` addresses them and answers;
``bodies.py`` streams and checks request bodies (payload hashes, aws-chunked, checksums);
``operations.py`` (buckets, objects, listings), ``multipart.py`` (multipart uploads); ``xml.py``
S3's documents.
"""

from moorage.api.s3.door import S3FrontDoor
from moorage.api.s3.request import s3_scope_in

__all__ = ["S3FrontDoor", "s3_scope_in"]
