"""
peers.py - real test peers on loopback for otpmail's integration tests
(Python 3 stdlib only; run as root).  Every fixture has start()/stop(), is a
context manager, works in a private temporary directory and removes it on
stop(); anything still running when the test exits is stopped by an atexit
hook (also on SIGTERM).  Traffic stays on 127.0.0.0/8.

  DnsServer(zones, addr='127.0.0.1', port=5353)
      An authoritative DNS server (NSD, from .ci/deps) serving Zone objects.
      Zone(name, records, signed=False): records are zone-file lines relative
      to the zone ("@ MX 10 mx1", "mx1 A 127.0.0.2", "_25._tcp.mx1 TLSA 3 1 1
      <hex>"); SOA, NS and ns A 127.0.0.1 are added.  signed=True signs the
      zone with ldns-signzone (ECDSA P-256, NSEC); the KSK's DS records of
      all signed zones are in dns.trust_anchor (a file for the config key
      dns_trust_anchor / ub_ctx_add_ta_file), keys stay the same across
      dns.reload(zones).
      dns.resolver -> "127.0.0.1@5353" (config key `resolver`);
      dns.conf_extra() -> "resolver = ...\\ndns_trust_anchor = ...\\n".
      libunbound answers NXDOMAIN itself for special-use names (*.test,
      *.invalid, *.localhost, *.onion): use names under example.org,
      example.net, example.com.
      dns_query(name, qtype, server, port) -> (rcode, ancount) checks it.

  TestCA(name='otpmail test CA')
      ca.ca_file: the CA certificate (config key tls_ca_file).
      ca.issue('mx.example.org', alt=('other.example.org',)) -> Cert with
      .cert, .key, .chain (cert + CA) paths; ca.self_signed(name) -> Cert
      not issued by the CA.  tlsa_rdata(cert_path, 3, 1, 1) -> "3 1 1 <hex>".

  PostfixPeer(addr='127.0.0.10', port=25, domains=('example.org',),
              hostname='mx.example.org', tls=True, cert=None,
              extra_main=None)
      A private Postfix instance (own config, queue and data directories)
      whose only listener is smtpd on addr:port.  It accepts mail for
      `domains` (one Maildir; Msg.rcpt from Delivered-To:) and refuses
      relaying elsewhere.  tls=True offers STARTTLS with cert (a Cert; a
      self-signed one for hostname by default); tls=False offers no STARTTLS.
      smtpd_tls_received_header is on, so a message received over TLS has
      "(using TLSv1.3 with cipher ...)" in its Received: header.
      p.messages() -> [Msg(rcpt, path, data)], p.wait_for(n, timeout) ->
      messages or raises, p.log() -> maillog text.  extra_main overrides
      main.cf keys (e.g. {'smtpd_recipient_restrictions': 'reject'}).

  SmtpSink(addr='127.0.0.2', port=25, dump=True, extra_args=())
      smtp-sink -u nobody on addr:port; extra_args e.g. ['-r', 'RCPT'] (soft
      reject), ['-f', 'RCPT'] (hard reject), ['-w', '30'] (slow).  With dump,
      each transaction lands in a file: s.messages() -> [Msg(rcpt, path,
      data)] where data is the dump (X-Client-Addr:, X-Helo-Args:,
      X-Mail-Args:, X-Rcpt-Args: lines, then the message); s.wait_for(n,
      timeout); s.restart(extra_args=None) keeps the dumps.

  SilentPeer(addr, port=25)
      Accepts TCP connections and never says anything (greeting timeouts).

  wait_port(addr, port, timeout=10, banner=True): waits for a listener
  (and its 220 banner).  port_in_use(addr, port).  Postfix and smtp-sink
  refuse to start on an address that already answers.
  HttpsServer(cert, addr='127.0.0.80', port=443)
      nginx (nginx-light) with TLS on addr:port; https.put(host, path, text)
      publishes a file under the Host name (text None removes it; an
      unpublished name answers 404), .txt as text/plain.  For MTA-STS.
"""

import atexit
import glob
import hashlib
import os
import pwd
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import namedtuple

Msg = namedtuple('Msg', 'rcpt path data')
Cert = namedtuple('Cert', 'cert key chain name')

_live = []


def _cleanup_all():
    for fx in list(reversed(_live)):
        try:
            fx.stop()
        except Exception as e:  # keep stopping the others
            sys.stderr.write('peers: stopping %r: %s\n' % (fx, e))


atexit.register(_cleanup_all)
if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))


def _run(cmd, cwd=None, input=None):
    r = subprocess.run(cmd, cwd=cwd, input=input, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
    if r.returncode != 0:
        raise RuntimeError('%s failed (%d): %s%s' % (
            ' '.join(cmd), r.returncode, r.stdout.decode(errors='replace'),
            r.stderr.decode(errors='replace')))
    return r.stdout


def _mkdtemp(prefix, mode=0o755):
    d = tempfile.mkdtemp(prefix=prefix)
    os.chmod(d, mode)
    return d


def _kill(proc, timeout=5, group=False):
    """Stops proc (and with group, its whole process group: NSD forks)."""
    if proc is None:
        return
    if group:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    elif proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if group:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except (ProcessLookupError, PermissionError):
                return
            time.sleep(0.05)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def wait_port(addr, port, timeout=10, banner=True):
    """Waits until addr:port accepts (and, with banner, sends a 220 line)."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            with socket.create_connection((addr, port), timeout=2) as s:
                if not banner:
                    return True
                line = s.recv(512)
                if line.startswith(b'220'):
                    try:
                        s.sendall(b'QUIT\r\n')
                    except OSError:
                        pass
                    return True
                last = line
        except OSError as e:
            last = e
        time.sleep(0.1)
    raise RuntimeError('no listener on %s:%d (%s)' % (addr, port, last))


def port_in_use(addr, port):
    """True if something accepts TCP connections on addr:port."""
    try:
        with socket.create_connection((addr, port), timeout=1):
            return True
    except OSError:
        return False


def _need_free(fx, addr, port):
    if port_in_use(addr, port):
        raise RuntimeError('%r: %s:%d is already in use (a stale peer?)' %
                           (fx, addr, port))


class _Fixture:
    started = False

    def start(self):
        raise NotImplementedError

    def stop(self):
        raise NotImplementedError

    def _register(self):
        self.started = True
        if self not in _live:
            _live.append(self)

    def _unregister(self):
        self.started = False
        if self in _live:
            _live.remove(self)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False


# ---------------------------------------------------------------- DNS

_QTYPES = {'A': 1, 'NS': 2, 'CNAME': 5, 'SOA': 6, 'MX': 15, 'TXT': 16,
           'AAAA': 28, 'DS': 43, 'DNSKEY': 48, 'TLSA': 52}


def dns_query(name, qtype='A', server='127.0.0.1', port=5353, timeout=1.0,
              dnssec=False):
    """One UDP query; returns (rcode, ancount) or raises OSError/timeout."""
    qid = int.from_bytes(os.urandom(2), 'big')
    hdr = struct.pack('>HHHHHH', qid, 0x0100, 1, 0, 0, 1 if dnssec else 0)
    q = b''
    for label in name.rstrip('.').split('.'):
        if label:
            q += bytes([len(label)]) + label.encode()
    q += b'\0' + struct.pack('>HH', _QTYPES.get(qtype, qtype) if
                             isinstance(qtype, str) else qtype, 1)
    if dnssec:
        q += b'\0' + struct.pack('>HHIH', 41, 4096, 0x8000, 0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(hdr + q, (server, port))
        while True:
            data, _ = s.recvfrom(65535)
            if len(data) >= 12 and struct.unpack('>H', data[:2])[0] == qid:
                flags, _, an = struct.unpack('>HHH', data[2:8])
                return flags & 0xf, an


class Zone:
    def __init__(self, name, records=(), signed=False):
        self.name = name.rstrip('.').lower()
        self.records = list(records)
        self.signed = signed

    def text(self, serial):
        z = self.name + '.'
        lines = ['$ORIGIN %s' % z, '$TTL 5',
                 '@ SOA ns.%s hostmaster.%s %d 3600 600 86400 5' % (z, z, serial),
                 '@ NS ns.%s' % z,
                 'ns A 127.0.0.1']
        lines += self.records
        return '\n'.join(lines) + '\n'


class DnsServer(_Fixture):
    def __init__(self, zones, addr='127.0.0.1', port=5353):
        self.zones = list(zones)
        self.addr = addr
        self.port = port
        self.dir = None
        self.proc = None
        self.trust_anchor = None
        self._serial = int(time.time())

    def __repr__(self):
        return 'DnsServer(%s:%d)' % (self.addr, self.port)

    @property
    def resolver(self):
        return '%s@%d' % (self.addr, self.port)

    def conf_extra(self):
        # the test MX hosts live on loopback, which DNS may not name otherwise
        s = 'resolver = %s\nmx_allow_internal = yes\n' % self.resolver
        if self.trust_anchor:
            s += 'dns_trust_anchor = %s\n' % self.trust_anchor
        return s

    def _keys(self, zone):
        kd = os.path.join(self.dir, 'keys', zone.name)
        if not os.path.isdir(kd):
            os.makedirs(kd)
            ksk = _run(['ldns-keygen', '-a', 'ECDSAP256SHA256', '-k',
                        zone.name], cwd=kd).decode().strip()
            zsk = _run(['ldns-keygen', '-a', 'ECDSAP256SHA256',
                        zone.name], cwd=kd).decode().strip()
            with open(os.path.join(kd, 'names'), 'w') as f:
                f.write('%s\n%s\n' % (ksk, zsk))
        with open(os.path.join(kd, 'names')) as f:
            ksk, zsk = f.read().split()
        return os.path.join(kd, ksk), os.path.join(kd, zsk)

    def _write_zones(self):
        self._serial += 1
        anchors = []
        conf = []
        for z in self.zones:
            path = os.path.join(self.dir, z.name + '.zone')
            with open(path, 'w') as f:
                f.write(z.text(self._serial))
            if z.signed:
                ksk, zsk = self._keys(z)
                now = time.time()
                fmt = '%Y%m%d%H%M%S'
                _run(['ldns-signzone', '-o', z.name,
                      '-i', time.strftime(fmt, time.gmtime(now - 3600)),
                      '-e', time.strftime(fmt, time.gmtime(now + 30 * 86400)),
                      '-f', path + '.signed', path, zsk, ksk])
                path += '.signed'
                with open(ksk + '.ds') as f:
                    anchors.append(f.read().strip())
            conf.append('zone:\n\tname: "%s"\n\tzonefile: "%s"\n' % (z.name, path))
        if anchors:
            self.trust_anchor = os.path.join(self.dir, 'trust-anchor')
            with open(self.trust_anchor, 'w') as f:
                f.write('\n'.join(anchors) + '\n')
            os.chmod(self.trust_anchor, 0o644)
        else:
            self.trust_anchor = None
        with open(os.path.join(self.dir, 'nsd.conf'), 'w') as f:
            f.write('server:\n'
                    '\tip-address: %s@%d\n'
                    '\tdo-ip6: no\n'
                    '\tusername: ""\n'
                    '\tchroot: ""\n'
                    '\tzonesdir: "%s"\n'
                    '\tdatabase: ""\n'
                    '\tzonelistfile: "%s/zone.list"\n'
                    '\txfrdfile: "%s/xfrd.state"\n'
                    '\tpidfile: "%s/nsd.pid"\n'
                    '\tlogfile: "%s/nsd.log"\n'
                    '\tserver-count: 1\n'
                    '\tverbosity: 1\n'
                    'remote-control:\n\tcontrol-enable: no\n'
                    % (self.addr, self.port, self.dir, self.dir, self.dir,
                       self.dir, self.dir))
            f.write(''.join(conf))

    def _launch(self):
        self._log = open(os.path.join(self.dir, 'nsd.out'), 'ab')
        self.proc = subprocess.Popen(
            ['nsd', '-d', '-c', os.path.join(self.dir, 'nsd.conf')],
            stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.time() + 10
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError('nsd exited: ' + self.log())
            try:
                if all(dns_query(z.name, 'SOA', self.addr, self.port, 0.3)[0] == 0
                       for z in self.zones):
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError('nsd did not answer: ' + self.log())

    def log(self):
        out = ''
        for n in ('nsd.out', 'nsd.log'):
            try:
                with open(os.path.join(self.dir, n), errors='replace') as f:
                    out += f.read()
            except OSError:
                pass
        return out

    def start(self):
        self.dir = _mkdtemp('otpm-dns-')
        self._register()
        self._write_zones()
        self._launch()
        return self

    def reload(self, zones=None):
        """Replaces the zones (same signing keys) and restarts the server."""
        if zones is not None:
            self.zones = list(zones)
        _kill(self.proc, group=True)
        self._log.close()
        self._write_zones()
        self._launch()

    def stop(self):
        _kill(self.proc, group=True)
        self.proc = None
        if getattr(self, '_log', None):
            self._log.close()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        self._unregister()


# ---------------------------------------------------------------- TLS

def tlsa_rdata(cert_path, usage=3, selector=1, mtype=1):
    """TLSA rdata text ("3 1 1 <hex>") for a PEM certificate."""
    if selector == 1:
        pub = _run(['openssl', 'x509', '-in', cert_path, '-noout', '-pubkey'])
        der = _run(['openssl', 'pkey', '-pubin', '-outform', 'DER'], input=pub)
    else:
        der = _run(['openssl', 'x509', '-in', cert_path, '-outform', 'DER'])
    if mtype == 1:
        data = hashlib.sha256(der).hexdigest()
    elif mtype == 2:
        data = hashlib.sha512(der).hexdigest()
    else:
        data = der.hex()
    return '%d %d %d %s' % (usage, selector, mtype, data)


class TestCA(_Fixture):
    __test__ = False  # not a pytest class

    def __init__(self, name='otpmail test CA'):
        self.name = name
        self.dir = None
        self._n = 0

    def __repr__(self):
        return 'TestCA(%s)' % self.dir

    @property
    def ca_file(self):
        return os.path.join(self.dir, 'ca.crt')

    def start(self):
        self.dir = _mkdtemp('otpm-ca-')
        self._register()
        key = os.path.join(self.dir, 'ca.key')
        _run(['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes',
              '-keyout', key, '-out', self.ca_file, '-days', '30',
              '-subj', '/CN=' + self.name,
              '-addext', 'basicConstraints=critical,CA:TRUE',
              '-addext', 'keyUsage=critical,keyCertSign,cRLSign'])
        os.chmod(self.ca_file, 0o644)
        return self

    def _paths(self, name):
        self._n += 1
        base = os.path.join(self.dir, '%s-%d' % (name.replace('/', '_'), self._n))
        return base + '.crt', base + '.key', base + '.chain'

    def issue(self, name, alt=()):
        crt, key, chain = self._paths(name)
        csr = crt + '.csr'
        ext = crt + '.ext'
        sans = ','.join('DNS:' + n for n in (name,) + tuple(alt))
        with open(ext, 'w') as f:
            f.write('basicConstraints=CA:FALSE\n'
                    'keyUsage=critical,digitalSignature,keyEncipherment\n'
                    'extendedKeyUsage=serverAuth\n'
                    'subjectAltName=%s\n' % sans)
        _run(['openssl', 'req', '-new', '-newkey', 'rsa:2048', '-nodes',
              '-keyout', key, '-out', csr, '-subj', '/CN=' + name])
        _run(['openssl', 'x509', '-req', '-in', csr, '-CA', self.ca_file,
              '-CAkey', os.path.join(self.dir, 'ca.key'), '-set_serial',
              str(1000 + self._n), '-days', '30', '-extfile', ext,
              '-out', crt])
        return self._finish(crt, key, chain, name, with_ca=True)

    def self_signed(self, name):
        crt, key, chain = self._paths(name)
        _run(['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes',
              '-keyout', key, '-out', crt, '-days', '30', '-subj', '/CN=' + name,
              '-addext', 'subjectAltName=DNS:' + name])
        return self._finish(crt, key, chain, name, with_ca=False)

    def _finish(self, crt, key, chain, name, with_ca):
        with open(chain, 'wb') as out:
            for p in (crt, self.ca_file) if with_ca else (crt,):
                with open(p, 'rb') as f:
                    out.write(f.read())
        for p in (crt, key, chain):
            os.chmod(p, 0o644)  # test keys: readable by the peers' users
        return Cert(crt, key, chain, name)

    def stop(self):
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        self._unregister()


# ---------------------------------------------------------------- SMTP

def _maildir_messages(base):
    out = []
    for p in glob.glob(os.path.join(base, 'new', '*')) + \
            glob.glob(os.path.join(base, 'cur', '*')):
        with open(p, 'rb') as f:
            data = f.read()
        rcpt = None
        for line in data.split(b'\n'):
            if line.lower().startswith(b'delivered-to:'):
                rcpt = line.split(b':', 1)[1].strip().decode(errors='replace')
                break
            if not line.strip():
                break
        out.append(Msg(rcpt, p, data))
    out.sort(key=lambda m: os.stat(m.path).st_mtime)
    return out


def _wait_for(fn, n, timeout, what):
    deadline = time.time() + timeout
    while True:
        msgs = fn()
        if len(msgs) >= n:
            return msgs
        if time.time() >= deadline:
            raise RuntimeError('%s: %d of %d messages after %ss' % (
                what, len(msgs), n, timeout))
        time.sleep(0.1)


_MASTER_CF = """\
{addr}:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixPeer(_Fixture):
    def __init__(self, addr='127.0.0.10', port=25, domains=('example.org',),
                 hostname='mx.example.org', tls=True, cert=None,
                 extra_main=None):
        self.addr = addr
        self.port = port
        self.domains = list(domains)
        self.hostname = hostname
        self.tls = tls
        self.cert = cert
        self.extra_main = dict(extra_main or {})
        self.dir = None

    def __repr__(self):
        return 'PostfixPeer(%s:%d)' % (self.addr, self.port)

    def _p(self, *a):
        return os.path.join(self.dir, *a)

    def start(self):
        _need_free(self, self.addr, self.port)
        self.dir = _mkdtemp('otpm-postfix-')
        self._register()
        nobody = pwd.getpwnam('nobody')
        pf = pwd.getpwnam('postfix')
        for d in ('etc', 'spool', 'data', 'mail'):
            os.mkdir(self._p(d), 0o755)
        os.chown(self._p('data'), pf.pw_uid, pf.pw_gid)
        os.chown(self._p('mail'), nobody.pw_uid, nobody.pw_gid)
        if self.tls and self.cert is None:
            crt, key = self._p('etc', 'cert.pem'), self._p('etc', 'key.pem')
            _run(['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes',
                  '-keyout', key, '-out', crt, '-days', '30',
                  '-subj', '/CN=' + self.hostname,
                  '-addext', 'subjectAltName=DNS:' + self.hostname])
            self.cert = Cert(crt, key, crt, self.hostname)
        main = {
            'compatibility_level': '3.6',
            'queue_directory': self._p('spool'),
            'data_directory': self._p('data'),
            'meta_directory': '/etc/postfix',
            'mail_owner': 'postfix',
            'setgid_group': 'postdrop',
            'myhostname': self.hostname,
            'mydomain': self.hostname.split('.', 1)[-1],
            'myorigin': '$myhostname',
            'mydestination': '',
            'local_recipient_maps': '',
            'alias_maps': '',
            'alias_database': '',
            # master.cf binds addr:port; 127.0.0.X is no interface address
            'inet_interfaces': 'all',
            'inet_protocols': 'ipv4',
            'mynetworks': '127.0.0.0/8',
            'smtpd_relay_restrictions': 'permit_mynetworks, reject_unauth_destination',
            'virtual_mailbox_domains': ', '.join(self.domains),
            'virtual_mailbox_base': self._p('mail'),
            # every recipient of `domains` -> one Maildir (Delivered-To: says who)
            'virtual_mailbox_maps': 'static:inbox/',
            'virtual_uid_maps': 'static:%d' % nobody.pw_uid,
            'virtual_gid_maps': 'static:%d' % nobody.pw_gid,
            'virtual_minimum_uid': '1',
            'maillog_file': self._p('maillog'),
            'maillog_file_prefixes': self.dir,
            'smtpd_banner': '$myhostname ESMTP',
            'biff': 'no',
            'append_dot_mydomain': 'no',
            'default_transport': 'error:test peer does not relay',
            'relay_transport': 'error:test peer does not relay',
            'smtp_tls_security_level': 'none',
            'smtpd_tls_security_level': 'may' if self.tls else 'none',
            'smtpd_tls_loglevel': '1',
            'smtpd_tls_received_header': 'yes',
            'smtpd_tls_session_cache_database': '',
            'delay_warning_time': '0',
            'message_size_limit': '20480000',
        }
        if self.tls:
            main['smtpd_tls_cert_file'] = self.cert.chain
            main['smtpd_tls_key_file'] = self.cert.key
        main.update(self.extra_main)
        with open(self._p('etc', 'main.cf'), 'w') as f:
            for k, v in main.items():
                f.write('%s = %s\n' % (k, v))
        with open(self._p('etc', 'master.cf'), 'w') as f:
            f.write(_MASTER_CF.format(addr=self.addr, port=self.port))
        self._postfix('check')
        self._postfix('start')
        try:
            wait_port(self.addr, self.port, 15)
        except RuntimeError as e:
            raise RuntimeError('%s: %s\n%s' % (self, e, self.log()))
        return self

    def _postfix(self, cmd):
        r = subprocess.run(['postfix', '-c', self._p('etc'), cmd],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if r.returncode != 0:
            # postfix(1) reports to syslog, or to stderr only on a terminal
            why = subprocess.run(
                ['script', '-qc', 'postfix -c %s %s' % (self._p('etc'), cmd),
                 '/dev/null'], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            raise RuntimeError('%s: postfix %s failed: %s%s' % (
                self, cmd, r.stdout.decode(errors='replace'),
                why.stdout.decode(errors='replace')))

    def log(self):
        try:
            with open(self._p('maillog'), errors='replace') as f:
                return f.read()
        except OSError:
            return ''

    def messages(self):
        return _maildir_messages(self._p('mail', 'inbox'))

    def wait_for(self, n=1, timeout=20):
        try:
            return _wait_for(self.messages, n, timeout, repr(self))
        except RuntimeError as e:
            raise RuntimeError('%s\n%s' % (e, self.log()))

    def stop(self):
        if self.dir is None:
            self._unregister()
            return
        pidfile = self._p('spool', 'pid', 'master.pid')
        pid = None
        try:
            with open(pidfile) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            pass
        subprocess.run(['postfix', '-c', self._p('etc'), 'stop'],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if pid:
            deadline = time.time() + 10
            while time.time() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None
        self._unregister()


class SmtpSink(_Fixture):
    def __init__(self, addr='127.0.0.2', port=25, dump=True, extra_args=(),
                 backlog=100):
        self.addr = addr
        self.port = port
        self.dump = dump
        self.extra_args = list(extra_args)
        self.backlog = backlog
        self.dir = None
        self.proc = None

    def __repr__(self):
        return 'SmtpSink(%s:%d)' % (self.addr, self.port)

    def start(self):
        _need_free(self, self.addr, self.port)
        if self.dir is None:
            self.dir = _mkdtemp('otpm-sink-')
            nobody = pwd.getpwnam('nobody')
            os.mkdir(os.path.join(self.dir, 'dump'), 0o700)
            os.chown(os.path.join(self.dir, 'dump'), nobody.pw_uid, nobody.pw_gid)
        self._register()
        cmd = ['smtp-sink', '-u', 'nobody']
        if self.dump:
            cmd += ['-d', os.path.join(self.dir, 'dump', '%Y%m%d%H%M%S.')]
        cmd += self.extra_args + ['%s:%d' % (self.addr, self.port),
                                  str(self.backlog)]
        self._log = open(os.path.join(self.dir, 'sink.log'), 'ab')
        self.proc = subprocess.Popen(cmd, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        try:
            # smtp-sink -w delays the banner: only check the port then.
            wait_port(self.addr, self.port, 10,
                      banner='-w' not in self.extra_args)
        except RuntimeError as e:
            raise RuntimeError('%s: %s %s' % (self, e, self.log()))
        return self

    def log(self):
        try:
            with open(os.path.join(self.dir, 'sink.log'), errors='replace') as f:
                return f.read()
        except OSError:
            return ''

    def restart(self, extra_args=None):
        if extra_args is not None:
            self.extra_args = list(extra_args)
        _kill(self.proc)
        self._log.close()
        return self.start()

    def stop_process(self):
        """Stops smtp-sink but keeps the dumps (a peer that went down)."""
        _kill(self.proc)
        self.proc = None

    def _open_dumps(self):
        """Dump files smtp-sink still has open: transactions in progress
        (it writes a dump as the data arrives and closes it at the end)."""
        busy = set()
        if self.proc is None or self.proc.poll() is not None:
            return busy
        fd_dir = '/proc/%d/fd' % self.proc.pid
        try:
            for fd in os.listdir(fd_dir):
                try:
                    busy.add(os.readlink(os.path.join(fd_dir, fd)))
                except OSError:
                    pass
        except OSError:
            pass
        return busy

    def messages(self):
        """The messages smtp-sink has received whole (dump files it closed)."""
        out = []
        if not self.dir:
            return out
        busy = self._open_dumps()
        paths = sorted((p for p in glob.glob(os.path.join(self.dir, 'dump', '*'))
                        if os.path.realpath(p) not in busy),
                       key=lambda p: os.stat(p).st_mtime)
        for p in paths:
            with open(p, 'rb') as f:
                data = f.read()
            rcpt = None
            for line in data.split(b'\n'):
                if line.startswith(b'X-Rcpt-Args:'):
                    rcpt = line.split(b':', 1)[1].strip().decode(
                        errors='replace').split()[0].strip('<>')
                    break
            out.append(Msg(rcpt, p, data))
        return out

    def wait_for(self, n=1, timeout=20):
        return _wait_for(self.messages, n, timeout, repr(self))

    def stop(self):
        _kill(self.proc)
        self.proc = None
        if getattr(self, '_log', None):
            self._log.close()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        self._unregister()


class SilentPeer(_Fixture):
    def __init__(self, addr='127.0.0.9', port=25):
        self.addr = addr
        self.port = port
        self.sock = None
        self.conns = []
        self._thread = None

    def __repr__(self):
        return 'SilentPeer(%s:%d)' % (self.addr, self.port)

    def start(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((self.addr, self.port))
        self.sock.listen(64)
        self._register()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()
        return self

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)

    def stop(self):
        if self.sock:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()
            self.sock = None
        for c in self.conns:
            c.close()
        self.conns = []
        self._unregister()


# ---------------------------------------------------------------- HTTPS

class HttpsServer(_Fixture):
    """nginx on addr:443 serving files under .root/<host name>/ (the Host
    header picks the directory), one certificate for every name; a name
    with no directory answers 404.  For MTA-STS policies."""

    def __init__(self, cert, addr='127.0.0.80', port=443):
        self.cert = cert
        self.addr = addr
        self.port = port
        self.dir = None
        self.proc = None

    def __repr__(self):
        return 'HttpsServer(%s:%d)' % (self.addr, self.port)

    @property
    def root(self):
        return os.path.join(self.dir, 'www')

    def put(self, host, path, text):
        """Publishes text at https://host/path (None removes it)."""
        full = os.path.join(self.root, host, path.lstrip('/'))
        if text is None:
            if os.path.exists(full):
                os.unlink(full)
            return
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, 'w') as f:
            f.write(text)

    def start(self):
        _need_free(self, self.addr, self.port)
        self.dir = _mkdtemp('otpm-nginx-')
        self._register()
        os.mkdir(self.root)
        for d in ('tmp', 'logs'):
            os.mkdir(os.path.join(self.dir, d))
        conf = os.path.join(self.dir, 'nginx.conf')
        with open(conf, 'w') as f:
            f.write(
                'daemon off;\nmaster_process off;\nuser root;\n'
                'pid %(d)s/nginx.pid;\nerror_log %(d)s/logs/error.log info;\n'
                'events { worker_connections 64; }\n'
                'http {\n'
                '  access_log %(d)s/logs/access.log;\n'
                '  client_body_temp_path %(d)s/tmp;\n'
                '  proxy_temp_path %(d)s/tmp;\n'
                '  fastcgi_temp_path %(d)s/tmp;\n'
                '  uwsgi_temp_path %(d)s/tmp;\n'
                '  scgi_temp_path %(d)s/tmp;\n'
                '  types { text/plain txt; }\n'
                '  default_type application/octet-stream;\n'
                '  server {\n'
                '    listen %(a)s:%(p)d ssl;\n'
                '    ssl_certificate %(c)s;\n'
                '    ssl_certificate_key %(k)s;\n'
                '    root %(r)s/$host;\n'
                '  }\n'
                '}\n' % {'d': self.dir, 'a': self.addr, 'p': self.port,
                         'c': self.cert.chain, 'k': self.cert.key,
                         'r': self.root})
        self._log = open(os.path.join(self.dir, 'nginx.out'), 'ab')
        self.proc = subprocess.Popen(['nginx', '-c', conf, '-p', self.dir],
                                     stdout=self._log, stderr=subprocess.STDOUT)
        try:
            wait_port(self.addr, self.port, 10, banner=False)
        except RuntimeError as e:
            raise RuntimeError('%s: %s\n%s' % (self, e, self.log()))
        return self

    def log(self):
        out = ''
        for n in ('nginx.out', 'logs/error.log', 'logs/access.log'):
            try:
                with open(os.path.join(self.dir, n), errors='replace') as f:
                    out += f.read()
            except OSError:
                pass
        return out

    stop = SmtpSink.stop
