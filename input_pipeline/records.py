"""The record types that cross module boundaries in the input pipeline.

Kept in one small module so that every stage (pcap reading, flow assembly,
labelling, tokenization, splits) agrees on them without importing each other.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np


@dataclasses.dataclass
class FlowRecord:
  """One bidirectional TCP flow, as much of it as PASS ever looks at.

  `payload` and `lengths` are the only fields a model may see. The
  communication fields (server address, SNI, certificate hash) exist only to
  pick weak negatives for contrastive pre-training.
  """
  capture: str            # capture file, relative to the dataset root when there is one
  index: int              # ordinal of this flow within its capture (first packet order)
  client_ip: str
  client_port: int
  server_ip: str
  server_port: int
  first_ts: float         # seconds since the epoch of the flow's first packet
  payload: bytes          # first <= m bytes of TCP payload, both directions, capture order
  lengths: np.ndarray     # int32[<= n], + client->server, - server->client
  sni: Optional[str] = None
  cert_sha256: Optional[str] = None   # hex SHA-256 of the server's first certificate
  packets_c2s: int = 0
  packets_s2c: int = 0
  bytes_c2s: int = 0      # TCP payload bytes client->server (whole flow, not just the first m)
  bytes_s2c: int = 0
  label: Optional[str] = None         # class name, None when no label covers this flow

  @property
  def flow_id(self) -> str:
    """Unique, stable id of the flow across a dataset: capture + ordinal."""
    return f"{self.capture}#{self.index}"

  @property
  def comm_key(self) -> str:
    """Communication identity used for weak negatives (paper, Alg. 1).

    The server certificate when one was seen in clear, else the server
    destination IP:port.
    """
    if self.cert_sha256:
      return f"cert:{self.cert_sha256}"
    return f"addr:{self.server_ip}:{self.server_port}"

  @property
  def five_tuple(self) -> tuple[str, int, str, int, str]:
    return (self.client_ip, self.client_port, self.server_ip, self.server_port, "tcp")
