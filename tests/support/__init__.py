"""Test support code: fakes and real local servers that tests run against."""
