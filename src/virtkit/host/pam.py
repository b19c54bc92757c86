"""Check a local account's password through PAM (libpam via ctypes), and its groups.

The web console's password login: the PAM service is ``virtkit`` (an administrator
may write ``/etc/pam.d/virtkit``; without one PAM uses ``/etc/pam.d/other``, which on
Debian is the system's ``common-auth`` and ``common-account``).  Both the auth and
the account stacks must pass, as for a login.  Who may then use the console is
decided by :func:`may_manage`: root and members of the ``virtkit`` group, the same
people who may open the daemon's unix socket.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import grp
import pwd
from typing import Any

SERVICE = "virtkit"
GROUP = "virtkit"

_PAM_PROMPT_ECHO_OFF = 1
_PAM_PROMPT_ECHO_ON = 2
_PAM_SUCCESS = 0


class _PamMessage(ctypes.Structure):
    _fields_ = [("msg_style", ctypes.c_int), ("msg", ctypes.c_char_p)]


class _PamResponse(ctypes.Structure):
    _fields_ = [("resp", ctypes.c_void_p), ("resp_retcode", ctypes.c_int)]


_CONV_FUNC = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.POINTER(_PamMessage)),
    ctypes.POINTER(ctypes.POINTER(_PamResponse)), ctypes.c_void_p)


class _PamConv(ctypes.Structure):
    _fields_ = [("conv", _CONV_FUNC), ("appdata_ptr", ctypes.c_void_p)]


def _libraries() -> tuple[Any, Any]:
    libpam = ctypes.CDLL(ctypes.util.find_library("pam") or "libpam.so.0")
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.calloc.restype = ctypes.c_void_p
    libc.calloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]
    libc.strdup.restype = ctypes.c_void_p
    libc.strdup.argtypes = [ctypes.c_char_p]
    libpam.pam_start.argtypes = [ctypes.c_char_p, ctypes.c_char_p,
                                 ctypes.POINTER(_PamConv), ctypes.POINTER(ctypes.c_void_p)]
    libpam.pam_authenticate.argtypes = [ctypes.c_void_p, ctypes.c_int]
    libpam.pam_acct_mgmt.argtypes = [ctypes.c_void_p, ctypes.c_int]
    libpam.pam_end.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return libpam, libc


def authenticate(user: str, password: str, service: str = SERVICE) -> bool:
    """True when PAM accepts ``password`` for ``user`` and the account may log in.

    Blocking (PAM may sleep after a failure): call it in a thread.
    """
    if not user or "\0" in user or "\0" in password:
        return False
    libpam, libc = _libraries()
    secret = password.encode()

    def conversation(count: int, messages: Any, responses: Any, _data: Any) -> int:
        # an array of responses that PAM frees: allocate it with libc, not Python
        array = libc.calloc(count, ctypes.sizeof(_PamResponse))
        replies = ctypes.cast(array, ctypes.POINTER(_PamResponse))
        for index in range(count):
            style = messages[index].contents.msg_style
            if style == _PAM_PROMPT_ECHO_OFF:
                replies[index].resp = libc.strdup(secret)
            elif style == _PAM_PROMPT_ECHO_ON:
                replies[index].resp = libc.strdup(user.encode())
        responses[0] = replies
        return _PAM_SUCCESS

    callback = _CONV_FUNC(conversation)  # kept alive until pam_end
    handle = ctypes.c_void_p()
    status = libpam.pam_start(service.encode(), user.encode(),
                              ctypes.byref(_PamConv(callback, None)), ctypes.byref(handle))
    if status != _PAM_SUCCESS:
        return False
    try:
        status = libpam.pam_authenticate(handle, 0)
        if status == _PAM_SUCCESS:
            status = libpam.pam_acct_mgmt(handle, 0)
        return bool(status == _PAM_SUCCESS)
    finally:
        libpam.pam_end(handle, status)


def may_manage(user: str, group: str = GROUP) -> bool:
    """True for root and for members of ``group`` (primary or supplementary)."""
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        return False
    if account.pw_uid == 0:
        return True
    try:
        entry = grp.getgrnam(group)
    except KeyError:
        return False
    return account.pw_gid == entry.gr_gid or user in entry.gr_mem
