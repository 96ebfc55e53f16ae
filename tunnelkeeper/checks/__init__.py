"""Conversations with the relay's daemons through the tunnel, to prove or to nudge.

probes      the end-to-end smtp / dns / tcp probe of a forward
dnsnotify   NOTIFY the relay's secondary when a zone's serial changes
mailtest    one real test message through the relay's MTA (`check --mail`)
boundary    `check`'s proof that the tunnel is not a way in: no relaying, transfers allowed
checker     the one-shot `check`: connect, open each forward, probe, prove, report
"""
