"""Knowledge-transfer methods (ScaLearn, SkillPacks, CMT, MemControl, MobileTL, TimeTic)."""
