/*
 * mail.h - the interface of agent/mail/, everything that makes a message:
 * address validation (address.h, the one validator every address passes),
 * RFC 5322 building blocks (message.h: buffers, Date, Message-ID, header
 * checks, encoded words), the one-time-code mail and its templates
 * (otp_mail.h), and the submit path (submit.h: DKIM-sign, then durably
 * enqueue; only after it returns may a request be answered "ok").
 *
 * May call: dkim/ (signing), queue/ (enqueue), agent/core/ (config, log,
 * metrics).  Must not touch: store/, the network, the control socket.
 * Other folders include only this header.
 */
#ifndef OTPMAIL_MAIL_H
#define OTPMAIL_MAIL_H

#include "agent/mail/address.h"
#include "agent/mail/message.h"
#include "agent/mail/otp_mail.h"
#include "agent/mail/submit.h"
#include "agent/mail/maildrop.h"

#endif
