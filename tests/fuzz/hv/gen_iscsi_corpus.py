#!/usr/bin/env python3
"""Write the seed corpus of the iSCSI fuzz targets (run from this folder).

Each seed is a realistic byte stream an initiator would send: a login
straight to full feature phase, then SCSI commands with immediate and
unsolicited data, NOP, Text, TMF and Logout; with and without CRC32C
digests; and a discovery session. The fuzzers mutate from there.
"""
import struct

def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF

class Stream:
    def __init__(self, hdigest=False, ddigest=False):
        self.out = b""
        self.itt = 1
        self.cmdsn = 1
        self.hd = False
        self.dd = False
        self.want = (hdigest, ddigest)

    def pdu(self, bhs, data=b""):
        bhs = bytearray(bhs)
        bhs[4] = 0
        bhs[5:8] = len(data).to_bytes(3, "big")
        out = bytes(bhs)
        if self.hd:
            out += struct.pack("<I", crc32c(bytes(bhs)))
        pad = b"\0" * ((4 - len(data) % 4) % 4)
        out += data + pad
        if self.dd and data:
            out += struct.pack("<I", crc32c(data + pad))
        self.out += out

    def login(self, keys, discovery=False):
        bhs = bytearray(48)
        bhs[0] = 0x40 | 0x03
        bhs[1] = 0x80 | (1 << 2) | 3
        bhs[8:14] = b"\x80\x00\x00\x01\x02\x03"
        struct.pack_into(">I", bhs, 16, self.itt)
        struct.pack_into(">I", bhs, 24, self.cmdsn)
        self.itt += 1
        self.pdu(bhs, b"".join(k.encode() + b"\0" for k in keys))
        self.hd, self.dd = self.want

    def scsi(self, cdb, edtl, read=False, write=False, data=b"", final=True):
        bhs = bytearray(48)
        bhs[0] = 0x01
        bhs[1] = (0x80 if final else 0) | (0x40 if read else 0) | (0x20 if write else 0) | 1
        struct.pack_into(">IIII", bhs, 16, self.itt, edtl, self.cmdsn, 0)
        bhs[32:32 + len(cdb)] = cdb
        itt = self.itt
        self.itt += 1
        self.cmdsn += 1
        self.pdu(bhs, data)
        return itt

    def data_out(self, itt, offset, data, datasn=0, final=True):
        bhs = bytearray(48)
        bhs[0] = 0x05
        bhs[1] = 0x80 if final else 0
        struct.pack_into(">II", bhs, 16, itt, 0xFFFFFFFF)
        struct.pack_into(">II", bhs, 36, datasn, offset)
        self.pdu(bhs, data)

    def simple(self, opcode, flags, fields=(), data=b"", immediate=True, ttt=0xFFFFFFFF):
        bhs = bytearray(48)
        bhs[0] = (0x40 if immediate else 0) | opcode
        bhs[1] = flags
        struct.pack_into(">IIII", bhs, 16, self.itt, ttt, self.cmdsn, 0)
        for off, val in fields:
            struct.pack_into(">I", bhs, off, val)
        self.itt += 1
        if not immediate:
            self.cmdsn += 1
        self.pdu(bhs, data)

NORMAL = ["InitiatorName=iqn.fuzz:i", "TargetName=iqn.fuzz:open", "SessionType=Normal",
          "InitialR2T=No", "ImmediateData=Yes", "MaxBurstLength=262144",
          "FirstBurstLength=65536", "MaxRecvDataSegmentLength=8192", "MaxOutstandingR2T=1",
          "ErrorRecoveryLevel=0", "X-com.example.Unknown=1"]

def session(hd=False, dd=False):
    s = Stream(hd, dd)
    s.login(NORMAL + ["HeaderDigest=%s" % ("CRC32C" if hd else "None"),
                      "DataDigest=%s" % ("CRC32C" if dd else "None")])
    s.scsi(bytes([0x12, 0, 0, 0, 96, 0]), 96, read=True)                 # INQUIRY
    s.scsi(bytes([0x25] + [0] * 9), 8, read=True)                       # READ CAPACITY
    s.scsi(bytes([0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0]), 4096, read=True)    # READ(10)
    itt = s.scsi(bytes([0x2a, 0, 0, 0, 0, 8, 0, 0, 16, 0]), 8192, write=True,
                 data=b"\xa5" * 4096, final=False)                      # WRITE(10)
    s.data_out(itt, 4096, b"\x5a" * 4096)
    s.scsi(bytes([0x00] * 6), 0)                                        # TEST UNIT READY
    s.scsi(bytes([0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0]), 64, read=True)  # REPORT LUNS
    s.simple(0x00, 0x80, data=b"ping")                                  # NOP-Out
    s.simple(0x04, 0x80, data=b"SendTargets=All\0")                     # Text
    s.simple(0x02, 0x80 | 1, fields=((20, 3),))                         # ABORT TASK
    s.simple(0x02, 0x80 | 5)                                            # LUN RESET
    s.simple(0x06, 0x80)                                                # Logout
    return s.out

def discovery():
    s = Stream()
    s.login(["InitiatorName=iqn.fuzz:i", "SessionType=Discovery"])
    s.simple(0x04, 0x80, data=b"SendTargets=All\0")
    s.simple(0x06, 0x80)
    return s.out

seeds = {
    "plain": b"\0" + session(),
    "plain_split7": b"\x07" + session(),
    "digests": b"\0" + session(True, True),
    "digests_split13": b"\x0d" + session(True, True),
    "discovery": b"\x05" + discovery(),
}
for name, blob in seeds.items():
    open("corpus/fuzz_iscsi_pdu/" + name, "wb").write(blob)

def login_seed(flags, texts):
    return bytes([flags]) + b"\xff".join(b"".join(k.encode() + b"\0" for k in t) for t in texts)

logins = {
    "operational": login_seed(3, [NORMAL]),
    "chap_start": login_seed(2, [["InitiatorName=iqn.fuzz:i", "TargetName=iqn.fuzz:chap",
                                  "AuthMethod=CHAP,None"], ["CHAP_A=7,6,5"],
                                 ["CHAP_N=user", "CHAP_R=0x00112233445566778899aabbccddeeff",
                                  "CHAP_I=1", "CHAP_C=0bAAECAwQFBgcICQoLDA0ODw=="]]),
    "continued": login_seed(0, [["InitiatorName=iqn.fuzz:i", "TargetName=iqn.fuzz:open"],
                                ["AuthMethod=None"]]),
    "denied": login_seed(2, [["InitiatorName=iqn.fuzz:denied", "TargetName=iqn.fuzz:open"]]),
    "discovery": login_seed(3, [["InitiatorName=iqn.fuzz:i", "SessionType=Discovery",
                                 "HeaderDigest=CRC32C,None"]]),
}
for name, blob in logins.items():
    open("corpus/fuzz_iscsi_login/" + name, "wb").write(blob)
