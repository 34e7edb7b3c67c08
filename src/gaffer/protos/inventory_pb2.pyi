from gaffer.protos import remote_execution_pb2 as _remote_execution_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InventoryReport(_message.Message):
    __slots__ = ("bot_session", "reset", "added", "removed")
    BOT_SESSION_FIELD_NUMBER: _ClassVar[int]
    RESET_FIELD_NUMBER: _ClassVar[int]
    ADDED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    bot_session: str
    reset: bool
    added: _containers.RepeatedCompositeFieldContainer[_remote_execution_pb2.Digest]
    removed: _containers.RepeatedCompositeFieldContainer[_remote_execution_pb2.Digest]
    def __init__(self, bot_session: _Optional[str] = ..., reset: _Optional[bool] = ..., added: _Optional[_Iterable[_Union[_remote_execution_pb2.Digest, _Mapping]]] = ..., removed: _Optional[_Iterable[_Union[_remote_execution_pb2.Digest, _Mapping]]] = ...) -> None: ...

class InventoryAck(_message.Message):
    __slots__ = ("held_blobs",)
    HELD_BLOBS_FIELD_NUMBER: _ClassVar[int]
    held_blobs: int
    def __init__(self, held_blobs: _Optional[int] = ...) -> None: ...
