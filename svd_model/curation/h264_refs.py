"""Which H.264 packets code reference pictures (pictures other pictures are predicted from), read from the slices'
NAL headers without decoding: :class:`H264References`. The analysis decode (decode.luma_chunks) uses it to skip
deblocking only where nothing depends on it and to hold only reference frames for 'reference' keyframes.
"""

from __future__ import annotations

import av

_VCL = (1, 5)  # H.264 NAL unit types of coded slices (non-IDR, IDR)


class H264References:
    """Whether an H.264 packet codes a reference picture, from its slices' ``nal_ref_idc`` (ITU-T H.264 7.4.1:
    0 = no other picture is predicted from it), for length-prefixed (avcC: MP4, MOV, MKV) and Annex B (start code)
    packets. :meth:`of` gives None for other codecs and for extradata it cannot read; :meth:`packet` gives None
    where it cannot tell (no slice, damaged lengths, slices that disagree, as two fields of one frame may)."""

    def __init__(self, length_size: int) -> None:
        self.length_size = length_size  # bytes of each NAL length prefix; 0 = Annex B start codes

    @classmethod
    def of(cls, stream: av.video.stream.VideoStream) -> H264References | None:
        if stream.codec_context.name != "h264":
            return None
        extra = bytes(stream.codec_context.extradata or b"")
        if len(extra) >= 7 and extra[0] == 1:  # AVCDecoderConfigurationRecord: lengthSizeMinusOne in byte 4
            return cls((extra[4] & 3) + 1)
        if not extra or extra.startswith((b"\0\0\1", b"\0\0\0\1")):
            return cls(0)
        return None

    def packet(self, data: bytes | memoryview) -> bool | None:
        flags = {(h >> 5) & 3 != 0 for h in self._slice_headers(memoryview(data))}
        return flags.pop() if len(flags) == 1 else None

    def _slice_headers(self, data: memoryview) -> list[int]:
        """The first byte of every coded-slice NAL unit in ``data``."""
        heads = []
        if self.length_size:
            i, n = 0, self.length_size
            while i + n < len(data):
                size = int.from_bytes(data[i : i + n], "big")
                if size < 1 or i + n + size > len(data):
                    return []  # damaged: a length past the packet
                if data[i + n] & 0x1F in _VCL:
                    heads.append(data[i + n])
                i += n + size
            return heads
        raw = bytes(data)
        start = raw.find(b"\0\0\1")
        while start >= 0 and start + 3 < len(raw):
            if raw[start + 3] & 0x1F in _VCL:
                heads.append(raw[start + 3])
            start = raw.find(b"\0\0\1", start + 3)
        return heads
