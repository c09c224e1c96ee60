"""What every layer's processes share and nothing of the method: logging and its wire format to the
driver (``logs``), the driver's console (``console``), the DDP backend (``ddp``) and the redaction of
credentials from anything shown (``redaction``). It imports no other part of the package.
"""
