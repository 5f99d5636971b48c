"""The language shared by the command and query sides: messages, enums, instruments, codec."""
