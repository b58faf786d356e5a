"""Send a table to TOPCAT, Aladin or any SAMP client through the running SAMP hub (`pyvo.samp`,
which astropy 8 moved it to from `astropy.samp`).

SAMP (the IVOA's Simple Application Messaging Protocol) passes a table by URL: the app writes the
VOTable into the run's app directory and broadcasts ``table.load.votable`` with its file URL, so the
clients must run on the machine that runs the app (where the hub is found: ~/.samp or $SAMP_HUB).
"""

from __future__ import annotations

from pathlib import Path

from fmb.errors import FmbError

MTYPE = "table.load.votable"
CLIENT_NAME = "fmb"
TIMEOUT_S = 10


def send_table(path: Path, name: str) -> list[str]:
    """Broadcast the VOTable at `path` as `name` to every client of the hub that loads VOTables;
    the names of those clients. FmbError when no hub runs or none listens."""
    from pyvo.samp import SAMPHubError, SAMPIntegratedClient, SAMPProxyError

    client = SAMPIntegratedClient(name=CLIENT_NAME, description="fmb discovery app")
    try:
        client.connect()
    except (SAMPHubError, OSError) as error:
        raise FmbError(f"no SAMP hub is running here ({error}): start TOPCAT or Aladin, which run one, "
                       "or download the table instead") from None
    try:
        listening = list(client.get_subscribed_clients(MTYPE))
        if not listening:
            raise FmbError("the SAMP hub runs, but no client there loads tables: start TOPCAT or Aladin")
        client.notify_all({"samp.mtype": MTYPE,
                           "samp.params": {"url": path.resolve().as_uri(), "table-id": path.stem, "name": name}})
        return [client.get_metadata(identifier).get("samp.name", identifier) for identifier in listening]
    except SAMPProxyError as error:
        raise FmbError(f"the SAMP hub refused the table: {error}") from None
    finally:
        client.disconnect()
